using DotQuant.Tests;
using System.Diagnostics;
using System.Text;
using DotQuant.Engine.Calibration;
using DotQuant.Engine.Evaluation;
using DotQuant.Engine.Gguf;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;
using DotQuant.Gguf.Tests;
using LLama.Native;
using static TorchSharp.torch;

namespace DotQuant.Bench;

/// <summary>Each family against llama.cpp, with the figures the tests only bound: the largest logit
/// difference on the F32 file, perplexity of the F32 file, and of three Q4_K_M files — llama.cpp's own
/// quantizer, our round-to-nearest (its bytes) and GPTQ — each scored by llama.cpp and by our eval.</summary>
static class FamilyChecks
{
    public const string Marker = "families";

    public static string Run(string shared)
    {
        string sample = File.ReadAllText(Path.Combine(shared, "data", "tinystories", "stories-sample.txt"));
        string wiki = Path.Combine(shared, "data", "wikitext2", "wiki.test.gptq-joined.txt");
        var sb = new StringBuilder();
        sb.AppendLine("## Families against llama.cpp");
        sb.AppendLine();
        sb.AppendLine($"Produced by `dotnet run -c Release --project bench/DotQuant.Bench -- families` on {DateTime.UtcNow:yyyy-MM-dd}. Synthetic checkpoints (`SyntheticFamilies`, hidden 256, byte-level vocabulary of 384 trained on TinyStories; no pretrained checkpoint of these families is offline), llama.cpp through LLamaSharp 0.30.0. Perplexity: 8 windows of 128 of WikiText-2 test; Δ = our eval / llama.cpp − 1. GPTQ: W4 on Q4_K_M's grids, 16 × 128 calibration tokens.");
        sb.AppendLine();
        sb.AppendLine("| family | max \\|Δlogit\\| / range (F32, 128 tokens) | F32 PPL (ours / Δ) | llama.cpp Q4_K_M (its PPL / Δ) | our RTN q4_k_m (Δ) | GPTQ q4_k_m (llama.cpp PPL / Δ) | GPTQ run s |");
        sb.AppendLine("|---|---|---|---|---|---|---|");
        foreach (var family in SyntheticFamilies.Names)
        {
            string dir = Directory.CreateTempSubdirectory("dotquant-family-").FullName;
            try
            {
                string folder = Path.Combine(dir, family);
                SyntheticModel.Write(folder, SyntheticFamilies.Spec(family, hidden: 256, tokenizerText: sample));
                string f32 = Path.Combine(dir, "f32.gguf");
                GgufFloatExport.Write(folder, f32, GgmlType.F32, name: "synthetic");
                var tokenizer = HfTokenizer.Load(folder);
                var ids = tokenizer.Encode(File.ReadAllText(wiki));
                double logitDiff = MaxLogitDifference(f32, ids.Take(128).ToArray());
                var (oursF32, deltaF32) = Both(f32, ids);

                string theirsQ = Path.Combine(dir, "llama-q4_k_m.gguf");
                LlamaCpp.Quantize(f32, theirsQ, LLamaFtype.MOSTLY_Q4_K_M);
                var (_, deltaTheirs) = Both(theirsQ, ids);
                double theirsPpl = LlamaCpp.Perplexity(theirsQ, ids, 128, 8);

                var (rtnFile, _) = Quantize(dir, folder, wiki, "rtn");
                var (_, deltaRtn) = Both(rtnFile, ids);
                var (gptqFile, seconds) = Quantize(dir, folder, wiki, "gptq");
                double gptqLlama = LlamaCpp.Perplexity(gptqFile, ids, 128, 8);
                var (_, deltaGptq) = Both(gptqFile, ids);
                sb.AppendLine($"| {family} | {logitDiff:E1} | {oursF32:F3} / {Pct(deltaF32)} | {theirsPpl:F3} / {Pct(deltaTheirs)} | {Pct(deltaRtn)} | {gptqLlama:F3} / {Pct(deltaGptq)} | {seconds:F1} |");
            }
            finally
            {
                Directory.Delete(dir, true);
            }
        }
        sb.AppendLine();
        sb.AppendLine("Reading it: the F32 rows are the forwards' agreement (llama.cpp's CPU GeLU reads an fp16 table: the GeLU families differ more, Gemma 3 most over its six layers). The quantized rows add llama.cpp's 8-bit rounding of activations in its quantized matmuls, which our eval (float activations, the arithmetic GPTQ optimizes for) does not do: our RTN file has llama.cpp's bytes, so its Δ is exactly the Δ of llama.cpp's own file.");
        return sb.ToString();
    }

    static string Pct(double d) => (d < 0 ? "−" : "+") + Math.Abs(d).ToString("0.000%", System.Globalization.CultureInfo.InvariantCulture);

    static (double Ours, double Delta) Both(string gguf, int[] ids)
    {
        using var model = ModelLoader.Open(gguf);
        double ours = Perplexity.Windows(model, ids, 128, 8).Perplexity;
        double theirs = LlamaCpp.Perplexity(gguf, ids, 128, 8);
        return (ours, ours / theirs - 1);
    }

    static double MaxLogitDifference(string gguf, int[] ids)
    {
        using var weights = LlamaCpp.Load(gguf, out var parameters);
        var llama = LlamaCpp.Logits(weights, parameters, ids);
        using var model = ModelLoader.Open(gguf);
        using var input = tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Length]);
        using var logits = model.Forward(input);
        return LlamaCpp.RelativeLogitDifferences(logits[0].data<float>().ToArray(), llama).Max();
    }

    static (string File, double Seconds) Quantize(string dir, string folder, string wiki, string method)
    {
        string yaml = Path.Combine(dir, method + ".yaml");
        File.WriteAllText(yaml, $"version: 1\nmodel: {folder}\ncalibration:\n  data: {wiki}\n  samples: 16\n  sequence_length: 128\n" +
            $"quantize:\n  method: {method}\noutput:\n  name: out\n  format: gguf\n  gguf: {{ type: q4_k_m }}\n");
        var sw = Stopwatch.StartNew();
        var result = QuantizeJob.Run(ManifestParser.Load(yaml), Path.Combine(dir, method));
        return (Path.Combine(result.Output, "out-q4_k_m.gguf"), sw.Elapsed.TotalSeconds);
    }
}
