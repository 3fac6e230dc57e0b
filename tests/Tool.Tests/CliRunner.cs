using System.Diagnostics;
using System.Text.Json;
using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

public sealed record CliResult(int ExitCode, string Stdout, string Stderr)
{
    public JsonElement LastJson() => JsonDocument.Parse(Stdout.TrimEnd().Split('\n')[^1]).RootElement;
}

public static class CliRunner
{
    /// <summary>Runs the command tree in-process (fast, same code as the executable's Main).</summary>
    public static CliResult Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Cli.Run(args, o, e);
        return new CliResult(code, o.ToString(), e.ToString());
    }

    /// <summary>Runs the built dotnet-quantize.dll in a child process, as a user would.</summary>
    public static CliResult RunProcess(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "dotnet-quantize.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        return new CliResult(p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>A copy of stories260K's folder that a test may break.</summary>
    public static TempDir CopyOfStories()
    {
        var dir = new TempDir();
        foreach (var f in new[] { "config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors" })
            File.Copy(Path.Combine(SharedPaths.Stories260K, f), dir.File(f));
        return dir;
    }
}
