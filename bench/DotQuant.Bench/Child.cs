using System.Diagnostics;

namespace DotQuant.Bench;

/// <summary>Runs this bench program again with other arguments in a fresh process (so peak RSS and
/// allocator state belong to one measurement) and returns the last line it printed.</summary>
static class Child
{
    public static string Run(bool captureOutput, params string[] args)
    {
        var psi = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardOutput = captureOutput };
        if (Path.GetFileNameWithoutExtension(Environment.ProcessPath!) == "dotnet")
            psi.ArgumentList.Add(typeof(Child).Assembly.Location);
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string line = captureOutput ? p.StandardOutput.ReadToEnd().Trim().Split('\n')[^1] : "";
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"`{string.Join(' ', args)}` failed with exit code {p.ExitCode}: {line}");
        return line;
    }
}
