using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.RegularExpressions;

namespace DotQuant.Tests;

/// <summary>Interrupts runs of the real tool at seeded random moments and resumes them: a run of the
/// manifest is timed undisturbed (its folder is the reference), then each trial starts the same run in a
/// fresh folder with --resume, sends SIGKILL or SIGTERM at a moment drawn uniformly over the undisturbed
/// run's duration (start-up, evaluation, any block, the write, the publish), waits for the process to go,
/// checks that no partial output was published, runs the same command again to completion and compares
/// every output file with the reference. Shared by ChaosTests (a few trials) and the bench (thirty).</summary>
public static class Chaos
{
    public sealed record Trial(int Index, double At, string Signal, int ExitCode, bool Published, bool PublishedEarly, int ResumedBlocks, bool Identical, string Detail);

    public sealed record Result(string Manifest, double UndisturbedSeconds, IReadOnlyList<Trial> Trials)
    {
        public int Interrupted => Trials.Count(t => t.ExitCode != 0);
        public int Identical => Trials.Count(t => t.Identical);
    }

    /// <summary>The undisturbed run: its output folder and wall seconds.</summary>
    public static (string Folder, double Seconds) Reference(string tool, string manifest, string work)
    {
        string dir = Path.Combine(work, "reference");
        var sw = Stopwatch.StartNew();
        var r = Run(tool, manifest, dir);
        double seconds = sw.Elapsed.TotalSeconds;
        if (r.ExitCode != 0) throw new InvalidOperationException($"the undisturbed run failed: {r.Stderr}");
        return (Output(dir), seconds);
    }

    public static Result Trials(string tool, string manifest, string work, (string Folder, double Seconds) reference, int count, string signal, int seed)
    {
        var expected = Hashes(reference.Folder);
        var rng = new Random(seed);
        var trials = new List<Trial>();
        for (int i = 0; i < count; i++)
        {
            double at = rng.NextDouble() * reference.Seconds;
            string dir = Path.Combine(work, $"{signal.ToLowerInvariant()}-{i}");
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
            var p = Start(tool, manifest, dir);
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(TimeSpan.FromSeconds(at)))
                using (var kill = Process.Start("kill", [$"-{signal}", p.Id.ToString()])!) kill.WaitForExit();
            if (!p.WaitForExit(TimeSpan.FromMinutes(5))) { p.Kill(true); throw new TimeoutException($"trial {i}: the run did not stop after {signal}"); }
            int exit = p.ExitCode;
            _ = stdout.Result; _ = stderr.Result;
            p.Dispose();
            // A run stopped before it finished has published nothing; one stopped after its publication
            // (the signal landed while it wrote its report or exited) has published all of it.
            bool published = Directory.Exists(Output(dir));
            bool publishedEarly = published && !Hashes(Output(dir)).SequenceEqual(expected);
            var resumed = Run(tool, manifest, dir);
            var m = Regex.Match(resumed.Stdout, "resuming after block (\\d+)");
            bool identical = resumed.ExitCode == 0 && Hashes(Output(dir)).SequenceEqual(expected);
            bool clean = !Directory.EnumerateDirectories(dir, ".*").Any();
            trials.Add(new Trial(i, at, signal, exit, published, publishedEarly, m.Success ? int.Parse(m.Groups[1].Value) : 0, identical && clean && !publishedEarly,
                resumed.ExitCode != 0 ? resumed.Stderr.Trim() : !identical ? "bytes differ" : !clean ? "a working folder was left behind" : publishedEarly ? "a stopped run published an output that differs" : ""));
            Directory.Delete(dir, true);
        }
        return new Result(manifest, reference.Seconds, trials);
    }

    static string Output(string dir) => Path.Combine(dir, "out");

    static Process Start(string tool, string manifest, string dir)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { tool, "run", manifest, "--output", dir, "--resume", "--format", "json" }) psi.ArgumentList.Add(a);
        return Process.Start(psi)!;
    }

    static (int ExitCode, string Stdout, string Stderr) Run(string tool, string manifest, string dir)
    {
        using var p = Start(tool, manifest, dir);
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    static List<(string, string)> Hashes(string folder) =>
        Directory.GetFiles(folder, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal)
            .Select(f => (Path.GetRelativePath(folder, f), Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))))).ToList();

    /// <summary>A llama-tiny manifest writing <paramref name="format"/> (the formats' own resume paths).</summary>
    public static string Manifest(string folder, string shared, string format, int samples = 8, int length = 64)
    {
        Directory.CreateDirectory(folder);
        string output = format switch
        {
            "gguf" => "  format: gguf\n  gguf: { type: q4_0 }\n",
            "onnx" => "  format: onnx\n",
            "gptq" => "  format: gptq\n",
            _ => "",
        };
        string quantize = format == "gguf" ? "  method: gptq\n" : "  method: gptq\n  bits: 4\n  group_size: 32\n" + (format == "gptq" ? "  symmetric: true\n" : "");
        string path = Path.Combine(folder, $"chaos-{format}.yaml");
        File.WriteAllText(path,
            $"version: 1\nmodel: {Path.Combine(shared, "models", "llama-tiny")}\ncalibration:\n  data: {Path.Combine(shared, "data", "wikitext2-tokenized", "valid.tokens")}\n" +
            $"  samples: {samples}\n  sequence_length: {length}\nquantize:\n{quantize}output:\n  name: out\n{output}");
        return path;
    }
}
