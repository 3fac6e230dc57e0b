using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.RegularExpressions;

namespace DotQuant.Tests;

/// <summary>Whole pipelines of the real tool under garbage-collector stress: a 64 KB gen0 budget
/// (DOTNET_GCgen0size) and a startup hook (tests/GcStressHook, loaded by DOTNET_STARTUP_HOOKS: no product
/// code) whose thread forces collections and finalizers all the time. Every calibrator, the evaluation (perplexity and a zero-shot task, before and after, read
/// back from what was written) and every output writer. A stressed run must finish, report that the
/// stress ran, keep the rooted-Scalar cache small and (where compared) write the unstressed run's bytes.
/// Shared by GcStressTests and the bench (many repetitions).</summary>
public static class GcStressRun
{
    public sealed record Case(string Name, string Quantize, string Output);

    public static readonly Case[] Cases =
    [
        new("rtn", "  method: rtn\n  bits: 4\n  group_size: 16\n", ""),
        new("gptq-actorder", "  method: gptq\n  bits: 4\n  group_size: 16\n  act_order: true\n", ""),
        new("gptaq-rescomp", "  method: gptaq\n  bits: 3\n  group_size: 16\n  compensation_aware: true\n", ""),
        new("oac-gptq", "  method: gptq\n  bits: 2\n  group_size: 16\n  hessian: output_adaptive\n", ""),
        new("oac-spqr", "  method: spqr\n  hessian: output_adaptive\n", ""),
        new("billm", "  method: billm\n", ""),
        new("quarot-gptq", "  method: gptq\n  bits: 3\n  group_size: 16\n  rotate: hadamard\n", ""),
        new("gptq-gguf", "  method: gptq\n", "  format: gguf\n  gguf: { type: q4_0 }\n"),
        new("gptq-onnx", "  method: gptq\n  bits: 4\n  group_size: 32\n", "  format: onnx\n"),
        new("gptq-gptqformat", "  method: gptq\n  bits: 4\n  group_size: 16\n  symmetric: true\n", "  format: gptq\n"),
    ];

    public sealed record Outcome(int ExitCode, long Collections, int RootedScalars, Dictionary<string, string> Files, string Stderr);

    public static string Manifest(string folder, string shared, Case c)
    {
        Directory.CreateDirectory(folder);
        string path = Path.Combine(folder, c.Name + ".yaml");
        File.WriteAllText(path,
            $"version: 1\nmodel: {Path.Combine(shared, "models", "stories260K")}\ncalibration:\n  data: {Path.Combine(shared, "data", "wikitext2-tokenized", "valid.tokens")}\n  samples: 8\n  sequence_length: 64\n" +
            $"quantize:\n{c.Quantize}output:\n  name: out\n{c.Output}" +
            $"evaluate:\n  perplexity: {{ data: {Path.Combine(shared, "data", "wikitext2", "wiki.test.gptq-joined.txt")}, sequence_length: 128, max_sequences: 4 }}\n" +
            $"  tasks: {{ names: [piqa], dir: {Path.Combine(shared, "data", "zeroshot")}, limit: 10 }}\n");
        return path;
    }

    /// <summary>The hook assembly beside the calling assembly (test and bench outputs both carry it).</summary>
    public static string Hook => Path.Combine(AppContext.BaseDirectory, "DotQuant.GcStressHook.dll");

    public static Outcome Run(string tool, string manifest, string output, bool stress)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { tool, "run", manifest, "--output", output, "-v", "q" }) psi.ArgumentList.Add(a);
        if (stress)
        {
            psi.Environment["DOTNET_GCgen0size"] = "0x10000";
            psi.Environment["DOTNET_STARTUP_HOOKS"] = Hook;
        }
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        string stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        _ = stdout.Result;
        var m = Regex.Match(stderr, "gc-stress: (\\d+) forced collections in [0-9.]+ s, (-?\\d+) rooted Scalars");
        string folder = Path.Combine(output, "out");
        var files = p.ExitCode == 0 && Directory.Exists(folder)
            ? Directory.GetFiles(folder, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal)
                .ToDictionary(f => Path.GetRelativePath(folder, f), f => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))))
            : [];
        return new Outcome(p.ExitCode, m.Success ? long.Parse(m.Groups[1].Value) : 0, m.Success ? int.Parse(m.Groups[2].Value) : -1, files, stderr);
    }
}
