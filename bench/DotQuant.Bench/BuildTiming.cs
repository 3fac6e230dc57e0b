using System.Diagnostics;
using System.Text;

namespace DotQuant.Bench;

/// <summary>What DotQuant costs inside `dotnet build` of samples/ConsumingApp: the first build
/// (quantizes into an empty cache), an unchanged rebuild (DotQuant skipped without a process), a
/// rebuild after touching the calibration file (one fingerprint pass, cache hit), and the same
/// unchanged rebuild with DotQuantEnabled=false for reference.</summary>
static class BuildTiming
{
    public static void Run(string repo, string outFile)
    {
        string app = Path.Combine(repo, "samples", "ConsumingApp");
        string cache = Path.Combine(Path.GetTempPath(), "dotquant-bench-build-cache");
        if (Directory.Exists(cache)) Directory.Delete(cache, true);
        Dotnet(repo, "build", app, "-c", "Release", "-p:DotQuantEnabled=false");   // warm: restore and compile once
        Dotnet(repo, "build", app, "-c", "Release", "-t:Clean");
        var rows = new List<(string, double)>
        {
            ("first build (quantizes GPTQ W4, 64×256 calibration tokens; empty cache)", Dotnet(repo, "build", app, "-c", "Release", $"-p:DotQuantCacheDir={cache}")),
            ("unchanged rebuild (DotQuantQuantize skipped, no process started)", Dotnet(repo, "build", app, "-c", "Release", $"-p:DotQuantCacheDir={cache}")),
        };
        var stamp = File.GetLastWriteTimeUtc(Path.Combine(app, "quant.yaml"));
        File.SetLastWriteTimeUtc(Path.Combine(app, "quant.yaml"), DateTime.UtcNow);
        rows.Add(("rebuild after touching quant.yaml (fingerprint pass, cache hit)", Dotnet(repo, "build", app, "-c", "Release", $"-p:DotQuantCacheDir={cache}")));
        File.SetLastWriteTimeUtc(Path.Combine(app, "quant.yaml"), stamp);
        rows.Add(("unchanged rebuild with DotQuantEnabled=false (reference)", Dotnet(repo, "build", app, "-c", "Release", "-p:DotQuantEnabled=false")));
        Directory.Delete(cache, true);

        var sb = new StringBuilder();
        sb.AppendLine("# Build integration timings");
        sb.AppendLine();
        sb.AppendLine($"Produced by `dotnet run -c Release --project bench/DotQuant.Bench -- build` on {DateTime.UtcNow:yyyy-MM-dd} ({Environment.ProcessorCount} cores).");
        sb.AppendLine("Each row is one `dotnet build -c Release samples/ConsumingApp` (wall clock, including MSBuild start-up).");
        sb.AppendLine();
        sb.AppendLine("| build | seconds |");
        sb.AppendLine("|---|---|");
        foreach (var (name, s) in rows) sb.AppendLine($"| {name} | {s:F1} |");
        File.WriteAllText(outFile, sb.ToString());
        Console.Write(sb);
    }

    static double Dotnet(string repo, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { WorkingDirectory = repo, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"dotnet {string.Join(' ', args)} failed:\n{output}");
        return sw.Elapsed.TotalSeconds;
    }
}
