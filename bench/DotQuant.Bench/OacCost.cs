using DotQuant.Tests;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using DotQuant.Engine.Calibration;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Bench;

/// <summary>What OAC's Hessian costs against layer-wise GPTQ on the same model and data: wall time
/// and peak RSS of a whole `run`, each in a fresh process (`dotquant-bench quantize-child YAML`).</summary>
static class OacCost
{
    public const string Marker = "oac-cost";

    public static string Run(string shared, bool quick)
    {
        string root = Path.Combine(Path.GetTempPath(), "dotquant-oac-cost");
        if (Directory.Exists(root)) Directory.Delete(root, true);
        Directory.CreateDirectory(root);
        string valid = Path.Combine(shared, "data", "wikitext2-tokenized", "valid.tokens");
        string synth = Path.Combine(root, "llama-h512");
        var spec = new SyntheticModel.Spec
        {
            ModelType = "llama", HiddenSize = 512, IntermediateSize = 1376, Layers = 8, Heads = 8, KvHeads = 4,
            VocabSize = 1024, MaxPositions = 512, TieWordEmbeddings = false, Seed = 5,
            TokenizerText = File.ReadAllText(valid)[..200_000],
        };
        SyntheticModel.Write(synth, spec);
        var models = new[] { ("stories260K (5 layers, d 64)", Path.Combine(shared, "models", "stories260K")), ("synthetic llama (8 layers, d 512, f 1376, vocab 1024, fp32)", synth) };
        var methods = new (string Label, string Quantize)[]
        {
            ("GPTQ W4 g16 (layer-wise H)", "method: gptq\n  bits: 4\n  group_size: 16"),
            ("OAC + GPTQ W4 g16 (sequential)", "method: gptq\n  bits: 4\n  group_size: 16\n  hessian: output_adaptive"),
            ("OAC + GPTQ W4 g16 (once, H̄ spilled per block)", "method: gptq\n  bits: 4\n  group_size: 16\n  hessian: output_adaptive\n  output_adaptive: { schedule: once }"),
            ("SpQR W2", "method: spqr\n  outliers: { relative_threshold: 3 }"),
            ("OAC + SpQR W2", "method: spqr\n  outliers: { relative_threshold: 3 }\n  hessian: output_adaptive"),
        };
        int samples = quick ? 16 : 128;
        var sb = new StringBuilder();
        sb.AppendLine("## OAC Hessian cost");
        sb.AppendLine();
        sb.AppendLine($"Produced by `dotnet run -c Release --project bench/DotQuant.Bench -- oac-cost{(quick ? " --quick" : "")}` on {DateTime.UtcNow:yyyy-MM-dd}.");
        sb.AppendLine($"Whole `run` (calibration {samples} × 256 tokens of `valid.tokens`, solve, write) in a fresh process; peak RSS is VmHWM,");
        sb.AppendLine("× is relative to layer-wise GPTQ on the same model. OAC (sequential), for each block, runs the calibration sequences in");
        sb.AppendLine($"chunks of up to {DotQuant.Engine.Hessians.OutputAdaptiveHessian.ChunkTokens} tokens forward through all later blocks and back (≈ L²/2 block passes of the whole set, each way),");
        sb.AppendLine("and forms each sequence's G_s = Δ_sᵀX_s from the captured inputs and output gradients by batched matmul.");
        sb.AppendLine();
        sb.AppendLine("| model | method | seconds | × time | peak RSS MB | × memory |");
        sb.AppendLine("|---|---|---|---|---|---|");
        foreach (var (modelLabel, dir) in models)
        {
            double baseSeconds = 0, baseRss = 0;
            foreach (var (label, quantize) in methods)
            {
                string yaml = Path.Combine(root, "m.yaml");
                File.WriteAllText(yaml, $"version: 1\nmodel: {dir}\ncalibration:\n  data: {valid}\n  samples: {samples}\n  sequence_length: 256\nquantize:\n  {quantize}\noutput:\n  name: out\n");
                var (seconds, rss) = Measure(yaml, Path.Combine(root, "out"));
                if (baseSeconds == 0) { baseSeconds = seconds; baseRss = rss; }
                sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {modelLabel} | {label} | {seconds:F1} | {seconds / baseSeconds:F2} | {rss / 1e6:F0} | {rss / baseRss:F2} |"));
                Console.WriteLine($"{modelLabel} {label}: {seconds:F1} s {rss / 1e6:F0} MB");
            }
        }
        Directory.Delete(root, true);
        return sb.ToString();
    }

    static (double Seconds, double PeakBytes) Measure(string yaml, string outDir)
    {
        var parts = DotQuant.Bench.Child.Run(true, "quantize-child", yaml, outDir).Split(' ');
        return (double.Parse(parts[0], CultureInfo.InvariantCulture), double.Parse(parts[1], CultureInfo.InvariantCulture));
    }

    public static int Child(string yaml, string outDir)
    {
        using (ones(1)) { }
        var sw = Stopwatch.StartNew();
        var result = QuantizeJob.Run(ManifestParser.Load(yaml), outDir);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{sw.Elapsed.TotalSeconds:F3} {RssLoad.Status("VmHWM")}"));
        Directory.Delete(result.Output, true);
        return 0;
    }
}
