using System.Diagnostics;
using System.Text.RegularExpressions;
using CsCheck;
using DotQuant.Engine.Calibration;
using DotQuant.Engine.Gguf;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Tests;

namespace DotQuant.Tool.Tests.Fuzzing;

/// <summary>Hostile files through the tool's own commands, in-process: a valid seed (a small synthetic
/// Llama as safetensors, GGUF and an ONNX GenAI folder, its tokenizer.json and config.json, a quant.yaml)
/// is edited by <see cref="Mutation"/>s and handed to <c>inspect</c>, <c>eval</c>, <c>tokenize</c> or
/// <c>fingerprint</c>. The property: the command succeeds or reports a DQ error (exit 1) — never an
/// internal error (DQ0900), an unhandled exception or a crash of the process — within
/// <see cref="TimeBound"/> and without its peak resident memory growing by more than
/// <see cref="MemoryBound"/> (a small file claiming huge tensors must be refused, not allocated).
/// CsCheck draws the edits from a seed and shrinks a failure to its simplest form; the failing file is
/// written to <see cref="Found"/> so it can be kept under Fuzzing/Crashers as a regression input.</summary>
public static class ReaderFuzz
{
    public static readonly TimeSpan TimeBound = TimeSpan.FromSeconds(20);
    public const long MemoryBound = 1L << 30;

    public sealed record Target(string Name, string Seed, string File, bool Text, Func<string, string[]> Args);

    public sealed record Verdict(bool Ok, string Why);

    static readonly Lazy<Seeds> Corpus = new(() => new Seeds());

    public static IReadOnlyList<Target> Targets => Corpus.Value.Targets;

    /// <summary>Where a failing input is written (TMP/dotquant-fuzz-found/TARGET-HASH.bin).</summary>
    public static string Found => Path.Combine(Path.GetTempPath(), "dotquant-fuzz-found");

    /// <summary>Runs <paramref name="iterations"/> random edit lists against a target; returns how many executions ran.</summary>
    public static long Check(Target target, int iterations, string? seed = null)
    {
        long executions = 0;
        var gen = (target.Text ? Mutation.Text : Mutation.Binary).Array[1, 4];
        gen.Sample(mutations =>
        {
            Interlocked.Increment(ref executions);
            byte[] input = mutations.Aggregate(File.ReadAllBytes(Path.Combine(target.Seed, target.File)), (d, m) => m.Apply(d));
            var verdict = Execute(target, input);
            if (!verdict.Ok) Keep(target, input);
            return verdict.Ok;
        }, iter: iterations, seed: seed, threads: 1, print: m => string.Join("; ", m.Select(x => x.ToString())));
        return executions;
    }

    /// <summary>The seed folder with <see cref="Target.File"/> replaced by <paramref name="input"/>, through the command.</summary>
    public static Verdict Execute(Target target, byte[] input)
    {
        string dir = Directory.CreateTempSubdirectory("dotquant-fuzz-").FullName;
        try
        {
            foreach (var f in Directory.GetFiles(target.Seed)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            File.WriteAllBytes(Path.Combine(dir, target.File), input);
            ResetPeakRss();
            long before = PeakRss();
            var run = Task.Factory.StartNew(() => CliRunner.Run(target.Args(dir)), TaskCreationOptions.LongRunning);
            if (!run.Wait(TimeBound)) return new Verdict(false, $"{target.Name}: no answer within {TimeBound.TotalSeconds:F0} s");
            var r = run.Result;
            long grown = PeakRss() - before;
            if (grown > MemoryBound) return new Verdict(false, $"{target.Name}: peak RSS grew by {grown >> 20} MB");
            if (r.ExitCode == 0) return new Verdict(true, "");
            if (r.ExitCode == 1 && Regex.IsMatch(r.Stderr, "error DQ0[0-8][0-9][0-9]")) return new Verdict(true, "");
            return new Verdict(false, $"{target.Name}: exit {r.ExitCode}: {r.Stderr.Trim()}");
        }
        finally
        {
            try { Directory.Delete(dir, true); } catch (IOException) { }
        }
    }

    static void Keep(Target target, byte[] input)
    {
        Directory.CreateDirectory(Found);
        string hash = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(input))[..12];
        File.WriteAllBytes(Path.Combine(Found, $"{Slug(target.Name)}-{hash}.bin"), input);
    }

    public static string Slug(string name) => Regex.Replace(name.ToLowerInvariant(), "[^a-z0-9]+", "-").Trim('-');

    /// <summary>Linux keeps the peak (VmHWM) until told to reset it (clear_refs 5).</summary>
    static void ResetPeakRss()
    {
        try { File.WriteAllText("/proc/self/clear_refs", "5"); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    static long PeakRss()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal)) return long.Parse(line[6..].Trim().Split(' ')[0]) * 1024;
        }
        catch (IOException) { }
        return Process.GetCurrentProcess().PeakWorkingSet64;
    }

    /// <summary>The valid inputs the edits start from, written once per process.</summary>
    sealed class Seeds
    {
        public readonly List<Target> Targets = [];

        public Seeds()
        {
            string root = Directory.CreateTempSubdirectory("dotquant-fuzz-seeds-").FullName;
            string sample = File.ReadAllText(SharedPaths.Data("tinystories", "stories-sample.txt"));
            string model = Path.Combine(root, "model");
            SyntheticModel.Write(model, new SyntheticModel.Spec
            {
                HiddenSize = 32, IntermediateSize = 64, Layers = 1, Heads = 2, KvHeads = 1, VocabSize = 320, MaxPositions = 64,
                TieWordEmbeddings = false, TokenizerText = sample,
            });
            string text = Path.Combine(root, "eval.txt");
            File.WriteAllText(text, sample[..2000]);
            string[] Eval(string path) => ["eval", path, "--data", text, "--sequence-length", "16", "--max-windows", "1"];

            string gguf = Path.Combine(root, "gguf");
            Directory.CreateDirectory(gguf);
            GgufFloatExport.Write(model, Path.Combine(gguf, "model.gguf"), GgmlType.F32);

            string onnx = Path.Combine(root, "onnx-run");
            Directory.CreateDirectory(onnx);
            File.WriteAllText(Path.Combine(onnx, "quant.yaml"),
                $"version: 1\nmodel: {model}\nquantize:\n  method: rtn\n  bits: 4\n  group_size: 32\noutput:\n  name: out\n  format: onnx\n");
            string onnxFolder = QuantizeJob.Run(ManifestParser.Load(Path.Combine(onnx, "quant.yaml")), onnx).Output;

            string manifest = Path.Combine(root, "manifest");
            Directory.CreateDirectory(manifest);
            File.WriteAllText(Path.Combine(manifest, "quant.yaml"),
                $"version: 1\nmodel: {model}\ncalibration:\n  data: {text}\n  samples: 4\n  sequence_length: 16\n" +
                "quantize:\n  method: gptq\n  bits: 4\n  group_size: 16\n  act_order: true\noutput:\n  name: out\n  format: gguf\n  gguf: { type: q4_0 }\n" +
                $"evaluate:\n  perplexity: {{ data: {text}, sequence_length: 16, max_sequences: 1 }}\n  gate: {{ max_perplexity_increase: 5% }}\n");

            Targets.Add(new("safetensors via inspect", model, "model.safetensors", false, d => ["inspect", d]));
            Targets.Add(new("safetensors via eval", model, "model.safetensors", false, Eval));
            Targets.Add(new("config.json via eval", model, "config.json", true, Eval));
            Targets.Add(new("tokenizer.json via tokenize", model, "tokenizer.json", true, d => ["tokenize", d, "--text", "Once upon a time, Lily's dog ran 123 miles!\n\n  Then it slept."]));
            Targets.Add(new("GGUF via inspect", gguf, "model.gguf", false, d => ["inspect", Path.Combine(d, "model.gguf")]));
            Targets.Add(new("GGUF via eval", gguf, "model.gguf", false, d => Eval(Path.Combine(d, "model.gguf"))));
            Targets.Add(new("ONNX model.onnx via eval", onnxFolder, "model.onnx", false, Eval));
            Targets.Add(new("ONNX genai_config.json via eval", onnxFolder, "genai_config.json", true, Eval));
            Targets.Add(new("quant.yaml via fingerprint", manifest, "quant.yaml", true, d => ["fingerprint", Path.Combine(d, "quant.yaml")]));
        }
    }
}
