using System.Globalization;
using System.Text;
using DotQuant.Engine.Calibration;
using DotQuant.Engine.Evaluation;
using DotQuant.Engine.Gguf;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;
using DotQuant.Gguf.Tests;
using LLama.Native;

namespace DotQuant.Bench;

/// <summary>GGUF files of every type from four quantizers: llama.cpp's own (llama-quantize's reference
/// quantizer through LLamaSharp, on our F16 GGUF, as a user converts then quantizes), and our runs with
/// format gguf — round-to-nearest on the type's grid, GPTQ and GPTAQ+ResComp solving on exactly the
/// blocks llama.cpp reads. Each file is scored twice over the same windows: by llama.cpp's forward and
/// by `eval`.</summary>
static class GgufQuality
{
    public const string Marker = "gguf";

    static readonly (string Type, LLamaFtype Ftype)[] Types =
    [
        ("q2_k", LLamaFtype.MOSTLY_Q2_K), ("q3_k", LLamaFtype.MOSTLY_Q3_K_M), ("q4_0", LLamaFtype.MOSTLY_Q4_0),
        ("q4_1", LLamaFtype.MOSTLY_Q4_1), ("q4_k", LLamaFtype.MOSTLY_Q4_K_M), ("q5_k", LLamaFtype.MOSTLY_Q5_K_M),
        ("q6_k", LLamaFtype.MOSTLY_Q6_K), ("q8_0", LLamaFtype.MOSTLY_Q8_0),
    ];

    static readonly (string Name, string Quantize)[] Methods =
    [
        ("RTN on the grid", "  method: rtn\n"),
        ("GPTQ on the grid", "  method: gptq\n"),
        ("GPTAQ+ResComp on the grid", "  method: gptaq\n  compensation_aware: true\n"),
    ];

    public static string Run(string shared, string benchDir, bool quick)
    {
        int windows = quick ? 16 : 48;
        string wiki = Path.Combine(shared, "data", "wikitext2", "wiki.test.gptq-joined.txt");
        string manifests = Path.Combine(benchDir, "quality");
        string work = Path.Combine(Path.GetTempPath(), "dotquant-quality-gguf");
        if (Directory.Exists(work)) Directory.Delete(work, true);
        Directory.CreateDirectory(work);
        var report = new StringBuilder();
        report.AppendLine("## GGUF: llama.cpp's quantizer vs solving on the GGUF grid (issue 11)");
        report.AppendLine();
        report.AppendLine($"Produced by `dotnet run -c Release --project bench/DotQuant.Bench -- quality-gguf{(quick ? " --quick" : "")}` on {DateTime.UtcNow:yyyy-MM-dd}.");
        report.AppendLine("llama.cpp = LLamaSharp 0.30.0 (llama.cpp b10221, CPU): `LLamaQuantizer.Quantize` (llama-quantize's defaults, output tensor");
        report.AppendLine("quantized, no importance matrix) on our F16 GGUF. Ours = `dotnet quantize run` with `output.format: gguf` (manifests");
        report.AppendLine("`bench/quality/gguf-*.yaml`), calibration `wikitext2-tokenized/valid.tokens` 128 × 256, seed 0. Types are llama-quantize's:");
        report.AppendLine("q3_k, q4_k and q5_k are its aliases for the _M mixes (attn_v/ffn_down with more bits in some layers, output Q6_K), and");
        report.AppendLine("every file gets the same per-tensor types from both. Perplexity: WikiText-2 test, GPTQ protocol,");
        report.AppendLine($"{windows} windows of 512 tokens, by llama.cpp's forward (fp32 KV cache) and by `eval` of the same file. bpw = tensor bytes × 8 / weights.");
        report.AppendLine();
        string[] models = ["stories260K", "llama-tiny"];
        // Every calibration first, then llama.cpp.
        var ours = new Dictionary<(string Model, string Type, string Method), (string File, string Objective)>();
        foreach (var model in models)
            foreach (var (type, _) in Types)
                foreach (var (name, quantize) in Methods)
                {
                    string file = $"gguf-{model}-{name.Split(' ')[0].ToLowerInvariant().Replace('+', '-')}-{type}";
                    string path = Path.Combine(manifests, file + ".yaml");
                    File.WriteAllText(path, Manifest(model, quantize, type, file));
                    var result = QuantizeJob.Run(ManifestParser.Load(path), work);
                    // The calibrators' own objective, tr(ΔW H ΔWᵀ) summed over the linears, against
                    // round-to-nearest on the same grid with the same H (recorded by the run).
                    var solved = result.Layers.Where(l => l.Quantized && double.IsFinite(l.RtnLoss) && l.RtnLoss > 0).ToList();
                    string objective = solved.Count == 0 ? "" : (solved.Sum(l => l.Loss) / solved.Sum(l => l.RtnLoss)).ToString("F3", CultureInfo.InvariantCulture);
                    ours[(model, type, name)] = (Path.Combine(result.Output, $"{file}-{type}.gguf"), objective);
                    Console.WriteLine($"{file}: done");
                }
        foreach (var model in models)
        {
            string dir = Path.Combine(shared, "models", model);
            var ids = HfTokenizer.Load(dir).Encode(File.ReadAllText(wiki));
            double fp;
            using (var m = ModelLoader.Open(dir)) fp = Perplexity.Windows(m, ids, 512, windows).Perplexity;
            string f16 = Path.Combine(work, $"{model}-f16.gguf");
            GgufFloatExport.Write(dir, f16, GgmlType.F16);
            report.AppendLine(string.Create(CultureInfo.InvariantCulture, $"### {model} (float32 {fp:F3}; F16 GGUF {new FileInfo(f16).Length:N0} bytes, llama.cpp {LlamaCpp.Perplexity(f16, ids, 512, windows):F3})"));
            report.AppendLine();
            report.AppendLine("| type | quantizer | file bytes | bpw | PPL llama.cpp | PPL eval | vs llama.cpp's | Σ layer loss / RTN's |");
            report.AppendLine("|---|---|---|---|---|---|---|---|");
            foreach (var (type, ftype) in Types)
            {
                double? baseline = null;
                string llamaFile = Path.Combine(work, $"{model}-llama-{type}.gguf");
                try
                {
                    LlamaCpp.Quantize(f16, llamaFile, ftype);
                    baseline = Row(report, type, "llama.cpp (llama-quantize)", llamaFile, ids, windows, null, "");
                }
                catch (InvalidOperationException)
                {
                    report.AppendLine($"| {type} | llama.cpp (llama-quantize) | refused: a row length no block divides (b10221 aborts; current llama.cpp and we keep it F16) | | | | | |");
                }
                foreach (var (name, _) in Methods)
                {
                    var (gguf, objective) = ours[(model, type, name)];
                    Row(report, type, name, gguf, ids, windows, baseline, objective);
                }
            }
            report.AppendLine();
        }
        Directory.Delete(work, true);
        return report.ToString();
    }

    static double Row(StringBuilder report, string type, string quantizer, string file, int[] ids, int windows, double? baseline, string objective)
    {
        double theirs = LlamaCpp.Perplexity(file, ids, 512, windows);
        double ours;
        using (var m = ModelLoader.Open(file)) ours = Perplexity.Windows(m, ids, 512, windows).Perplexity;
        long bytes = 0, weights = 0;
        using (var g = GgufFile.Open(file))
            foreach (var t in g.Tensors) { bytes += t.Bytes; weights += t.Dims.Aggregate(1L, (a, b) => a * b); }
        double pct = baseline is double b ? Math.Round((theirs / b - 1) * 100, 1) : double.NaN;
        string delta = double.IsNaN(pct) ? "" : pct == 0 ? "±0.0%" : pct.ToString("+0.0;-0.0", CultureInfo.InvariantCulture) + "%";
        report.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"| {type} | {quantizer} | {new FileInfo(file).Length:N0} | {bytes * 8.0 / weights:F2} | {theirs:F3} | {ours:F3} | {delta} | {objective} |"));
        return theirs;
    }

    static string Manifest(string model, string quantize, string type, string name) =>
        $"# dotnet run -c Release --project src/Tool -- run bench/quality/<this file>\nversion: 1\nmodel: ../../../shared/models/{model}\n" +
        "calibration:\n  data: ../../../shared/data/wikitext2-tokenized/valid.tokens\n  samples: 128\n  sequence_length: 256\n  seed: 0\n" +
        $"quantize:\n{quantize}output:\n  name: {name}\n  format: gguf\n  gguf: {{ type: {type} }}\n";
}
