using System.Globalization;
using System.Text;
using DotQuant.Engine.Calibration;
using DotQuant.Engine.Evaluation;
using DotQuant.Engine.Gguf;
using DotQuant.Engine.Imatrix;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;
using DotQuant.Gguf.Tests;

namespace DotQuant.Bench;

/// <summary>Importance matrices (issue 24): llama.cpp's own pipeline (llama-imatrix, then llama-quantize
/// with and without --imatrix, the binaries in ../shared/tools/llama.cpp) against ours on the same text and
/// token count — round-to-nearest with our imatrix (`dotnet quantize imatrix` + `hessian: imatrix`), and the
/// solvers on the same grids with and without `grid_importance` (their block searches weighted by diag H).
/// Every file is scored by llama.cpp's forward over the same windows.</summary>
static class ImatrixQuality
{
    public const string Marker = "imatrix";

    static readonly (string Type, string Llama)[] Types =
        [("q2_k", "Q2_K"), ("q3_k", "Q3_K_M"), ("q4_0", "Q4_0"), ("q4_k", "Q4_K_M"), ("q5_k", "Q5_K_M")];

    static readonly (string Name, string Quantize)[] Solvers =
    [
        ("GPTQ", "  method: gptq\n"),
        ("GPTQ + grid_importance", "  method: gptq\n  grid_importance: true\n"),
        ("GPTAQ+ResComp", "  method: gptaq\n  compensation_aware: true\n"),
        ("GPTAQ+ResComp + grid_importance", "  method: gptaq\n  compensation_aware: true\n  grid_importance: true\n"),
    ];

    const int Context = 256, Chunks = 128;

    public static string Run(string shared, string benchDir, bool quick)
    {
        int windows = quick ? 16 : 48;
        string wiki = Path.Combine(shared, "data", "wikitext2", "wiki.test.gptq-joined.txt");
        string calib = Path.Combine(shared, "data", "wikitext2-tokenized", "valid.tokens");
        string work = Path.Combine(Path.GetTempPath(), "dotquant-quality-imatrix");
        if (Directory.Exists(work)) Directory.Delete(work, true);
        Directory.CreateDirectory(work);
        var report = new StringBuilder();
        report.AppendLine("## Importance matrices and AWQ: llama.cpp's imatrix pipeline vs ours, AWQ, and importance inside the solvers (issue 24)");
        report.AppendLine();
        report.AppendLine($"Produced by `dotnet run -c Release --project bench/DotQuant.Bench -- quality-imatrix{(quick ? " --quick" : "")}` on {DateTime.UtcNow:yyyy-MM-dd}.");
        report.AppendLine($"llama.cpp = its own binaries (`../shared/tools/llama.cpp`, libllama 0.0.9749): `llama-imatrix -c {Context} --chunks {Chunks}` on");
        report.AppendLine("`wikitext2-tokenized/valid.tokens` (its first 128 chunks of 256 tokens, BOS first), then `llama-quantize [--imatrix]` on our F32 GGUF.");
        report.AppendLine("DotQuant imatrix = `dotnet quantize imatrix` on the same text and chunks, then `run` with `method: rtn, hessian: imatrix`.");
        report.AppendLine("The solvers calibrate on the same file, 128 random windows × 256 tokens (seed 0): the same text and token count.");
        report.AppendLine("`grid_importance` weighs each k-quant super-block's scale search (llama.cpp's weighted search, as --imatrix uses it)");
        report.AppendLine("with diag(H) of its columns — the solver's own statistic, no imatrix file; the 32-element types (q4_0) are unaffected.");
        report.AppendLine("AWQ = `awq: true` (20-point α grid, clipping search; spec §6.2) with the same calibration, before round-to-nearest or GPTQ.");
        report.AppendLine($"Perplexity: WikiText-2 test, GPTQ protocol, {windows} windows of 512 tokens, by llama.cpp's forward (LLamaSharp, fp32 KV cache).");
        report.AppendLine();
        foreach (var model in new[] { "stories260K", "llama-tiny" })
        {
            string dir = Path.Combine(shared, "models", model);
            string f32 = Path.Combine(work, $"{model}-f32.gguf");
            GgufFloatExport.Write(dir, f32, GgmlType.F32);
            string theirsMatrix = Path.Combine(work, $"{model}-llama-imatrix.gguf"), oursMatrix = Path.Combine(work, $"{model}-imatrix.gguf");
            LlamaCppTools.Run("llama-imatrix", ["-m", f32, "-f", calib, "-c", $"{Context}", "--chunks", $"{Chunks}", "-o", theirsMatrix, "--no-ppl", "-t", "2"], 1800);
            var tokenizer = HfTokenizer.Load(dir);
            var chunks = ImatrixCollector.Chunks(tokenizer.Encode(File.ReadAllText(calib), addBos: true, parseSpecial: false), Context, Chunks, tokenizer.BosTokenId);
            using (var m = ModelLoader.Open(dir))
                ImatrixCollector.Collect(m, chunks, Context, [calib]).Write(oursMatrix);
            double agreement = Agreement(ImportanceMatrix.Load(theirsMatrix), ImportanceMatrix.Load(oursMatrix));

            var ids = tokenizer.Encode(File.ReadAllText(wiki));
            double fp;
            using (var m = ModelLoader.Open(dir)) fp = Perplexity.Windows(m, ids, 512, windows).Perplexity;
            report.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"### {model} (float32 {fp:F3}; llama.cpp's F32 GGUF {LlamaCpp.Perplexity(f32, ids, 512, windows):F3}; our imatrix vs llama-imatrix's: largest relative difference of a sum {agreement:E1})"));
            report.AppendLine();
            report.AppendLine("| type | quantizer | bpw | PPL llama.cpp | vs llama-quantize |");
            report.AppendLine("|---|---|---|---|---|");
            foreach (var (type, llamaType) in Types)
            {
                string plain = Path.Combine(work, $"{model}-{type}-llama.gguf"), weighted = Path.Combine(work, $"{model}-{type}-llama-imatrix.gguf");
                double? baseline = null;
                try
                {
                    LlamaCppTools.Run("llama-quantize", [f32, plain, llamaType, "2"]);
                    baseline = Row(report, type, "llama-quantize", plain, ids, windows, null);
                    LlamaCppTools.Run("llama-quantize", ["--imatrix", theirsMatrix, f32, weighted, llamaType, "2"]);
                    Row(report, type, "llama-quantize --imatrix (llama-imatrix)", weighted, ids, windows, baseline);
                }
                catch (InvalidOperationException e)
                {
                    string why = e.Message.Split('\n').FirstOrDefault(l => l.Contains("failed to quantize:"))?.Split("failed to quantize:")[1].Trim() ?? e.Message.Split('\n')[0];
                    report.AppendLine($"| {type} | llama-quantize | refused: {why} (we keep such rows F16) | | |");
                }
                Row(report, type, "DotQuant RTN + imatrix (ours)", Ours(work, model, type, $"  method: rtn\n  hessian: imatrix\n  imatrix: {oursMatrix}\n", "rtn-imatrix", calib), ids, windows, baseline);
                Row(report, type, "DotQuant RTN + AWQ", Ours(work, model, type, "  method: rtn\n  awq: true\n", "rtn-awq", calib), ids, windows, baseline);
                foreach (var (name, quantize) in Solvers)
                    Row(report, type, $"DotQuant {name}", Ours(work, model, type, quantize, name.ToLowerInvariant().Replace(' ', '-').Replace('+', '-'), calib), ids, windows, baseline);
                Console.WriteLine($"{model} {type}: done");
            }
            report.AppendLine();
            WBits(report, work, model, calib, ids, windows);
        }
        Directory.Delete(work, true);
        return report.ToString();
    }

    static readonly (string Name, string Quantize)[] WMethods =
    [
        ("RTN", "  method: rtn\n"),
        ("AWQ (+ RTN)", "  method: rtn\n  awq: true\n"),
        ("GPTQ", "  method: gptq\n"),
        ("AWQ + GPTQ", "  method: gptq\n  awq: true\n"),
        ("AWQ without clipping + GPTQ", "  method: gptq\n  awq: { clip: false }\n"),
        ("GPTAQ+ResComp", "  method: gptaq\n  compensation_aware: true\n"),
    ];

    /// <summary>The integer grids (format dotquant, asymmetric, groups of 128) at 4 and 3 bits, scored by `eval`.</summary>
    static void WBits(StringBuilder report, string work, string model, string calib, int[] ids, int windows)
    {
        report.AppendLine($"{model}, integer grids (format dotquant, asymmetric, group size 128), perplexity by `eval` over the same windows:");
        report.AppendLine();
        report.AppendLine("| bits | method | PPL | vs RTN | seconds |");
        report.AppendLine("|---|---|---|---|---|");
        foreach (int bits in new[] { 4, 3 })
        {
            double? rtn = null;
            foreach (var (name, quantize) in WMethods)
            {
                string tag = $"{model}-w{bits}-{name.ToLowerInvariant().Replace(' ', '-').Replace('+', '-').Replace("(", "").Replace(")", "")}";
                var result = Quantize(work, model, calib, tag, $"{quantize}  bits: {bits}\n  group_size: 128\n", "");
                double ppl;
                using (var m = ModelLoader.Open(result.Output)) ppl = Perplexity.Windows(m, ids, 512, windows).Perplexity;
                rtn ??= ppl;
                string delta = name == "RTN" ? "" : ((ppl / rtn.Value - 1) * 100).ToString("+0.00;-0.00;±0.00", CultureInfo.InvariantCulture) + "%";
                report.AppendLine(string.Create(CultureInfo.InvariantCulture, $"| W{bits} | {name} | {ppl:F3} | {delta} | {result.Seconds:F0} |"));
                Console.WriteLine($"{tag}: {ppl:F3}");
            }
        }
        report.AppendLine();
    }

    static string Ours(string work, string model, string type, string quantize, string tag, string calib)
    {
        string name = $"{model}-{type}-{tag}";
        var result = Quantize(work, model, calib, name, quantize, $"  format: gguf\n  gguf: {{ type: {type} }}\n");
        return Path.Combine(result.Output, $"{name}-{type}.gguf");
    }

    /// <summary>One run on the bench's calibration (128 × 256 of <paramref name="calib"/>, seed 0).</summary>
    static JobResult Quantize(string work, string model, string calib, string name, string quantize, string output)
    {
        string yaml = Path.Combine(work, name + ".yaml");
        File.WriteAllText(yaml,
            $"version: 1\nmodel: {Path.Combine(Path.GetDirectoryName(calib)!, "..", "..", "models", model)}\n" +
            $"calibration:\n  data: {calib}\n  samples: 128\n  sequence_length: 256\n  seed: 0\n" +
            $"quantize:\n{quantize}output:\n  name: {name}\n{output}");
        return QuantizeJob.Run(ManifestParser.Load(yaml), work);
    }

    static double Agreement(ImportanceMatrix theirs, ImportanceMatrix ours)
    {
        double worst = 0;
        foreach (var (name, t) in theirs.Entries)
        {
            if (!ours.Entries.TryGetValue(name, out var o)) return double.PositiveInfinity;
            for (int j = 0; j < t.Sums.Length; j++) worst = Math.Max(worst, Math.Abs(o.Sums[j] - t.Sums[j]) / Math.Max(t.Sums[j], 1e-30));
        }
        return worst;
    }

    static double Row(StringBuilder report, string type, string quantizer, string file, int[] ids, int windows, double? baseline)
    {
        double ppl = LlamaCpp.Perplexity(file, ids, 512, windows);
        long bytes = 0, weights = 0;
        using (var g = GgufFile.Open(file))
            foreach (var t in g.Tensors) { bytes += t.Bytes; weights += t.Dims.Aggregate(1L, (a, b) => a * b); }
        string delta = baseline is double b ? ((ppl / b - 1) * 100).ToString("+0.00;-0.00;±0.00", CultureInfo.InvariantCulture) + "%" : "";
        report.AppendLine(string.Create(CultureInfo.InvariantCulture, $"| {type} | {quantizer} | {bytes * 8.0 / weights:F2} | {ppl:F3} | {delta} |"));
        return ppl;
    }
}
