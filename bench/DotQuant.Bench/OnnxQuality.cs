using System.Diagnostics;
using System.Globalization;
using System.Text;
using DotQuant.Engine.Calibration;
using DotQuant.Engine.Evaluation;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;
using DotQuant.Gguf.Tests;
using DotQuant.Onnx.Tests;
using LLama;
using LLama.Native;
using GenAi = Microsoft.ML.OnnxRuntimeGenAI;

namespace DotQuant.Bench;

/// <summary>ONNX int4 folders (MatMulNBits) from three calibrators at two block sizes: perplexity through
/// ONNX Runtime and through `eval` of the same folder, size on disk, and greedy generation speed through
/// ONNX Runtime GenAI against llama.cpp (LLamaSharp) on the GGUF Q4_0 (blocks of 32) of the same
/// calibrator, all in one run.</summary>
static class OnnxQuality
{
    public const string Marker = "onnx";
    const int Generated = 256;

    static readonly (string Name, string Quantize)[] Methods =
    [
        ("RTN", "  method: rtn\n"),
        ("GPTQ", "  method: gptq\n"),
        ("GPTAQ+ResComp", "  method: gptaq\n  compensation_aware: true\n"),
    ];

    public static string Run(string shared, string benchDir, bool quick)
    {
        int windows = quick ? 16 : 48;
        string wiki = Path.Combine(shared, "data", "wikitext2", "wiki.test.gptq-joined.txt");
        string manifests = Path.Combine(benchDir, "quality");
        string work = Path.Combine(Path.GetTempPath(), "dotquant-quality-onnx");
        if (Directory.Exists(work)) Directory.Delete(work, true);
        Directory.CreateDirectory(work);
        var report = new StringBuilder();
        report.AppendLine("## ONNX Runtime GenAI int4: calibrators and block sizes, ORT GenAI vs llama.cpp (issue 14)");
        report.AppendLine();
        report.AppendLine($"Produced by `dotnet run -c Release --project bench/DotQuant.Bench -- quality-onnx{(quick ? " --quick" : "")}` on {DateTime.UtcNow:yyyy-MM-dd}.");
        report.AppendLine("Ours = `dotnet quantize run` with `output.format: onnx` and its defaults (head int8, accuracy_level 4: ORT rounds activations to int8");
        report.AppendLine("inside MatMulNBits) (manifests `bench/quality/onnx-*.yaml`), W4 asymmetric, groups = MatMulNBits");
        report.AppendLine("blocks of 32 or 128, calibration `wikitext2-tokenized/valid.tokens` 128 × 256, seed 0. PPL: WikiText-2 test, GPTQ protocol,");
        report.AppendLine($"{windows} windows of 512 tokens, by an ONNX Runtime 1.31.1 session over model.onnx and by `eval` of the same folder (fp32 activations). Bytes: model.onnx +");
        report.AppendLine($"model.onnx.data (embeddings and norms fp32). Generation: BOS then {Generated} greedy tokens, timed from the first forward to");
        report.AppendLine("the last token (model loading excluded), best of 3, each runtime with its default threads on this");
        report.AppendLine("2-core machine; ORT GenAI 0.18.0 on the folder, llama.cpp (LLamaSharp 0.30.0) on the GGUF Q4_0 file of the same calibrator (its blocks");
        report.AppendLine("are 32 columns, so the block-32 rows compare like with like).");
        report.AppendLine();
        string[] models = ["stories260K", "llama-tiny"];
        var folders = new Dictionary<(string, string, int), string>();
        var ggufs = new Dictionary<(string, string), string>();
        foreach (var model in models)
            foreach (var (name, quantize) in Methods)
            {
                string tag = name.ToLowerInvariant().Replace('+', '-');
                foreach (int block in new[] { 32, 128 })
                {
                    string file = $"onnx-{model}-{tag}-g{block}";
                    string path = Path.Combine(manifests, file + ".yaml");
                    File.WriteAllText(path, Manifest(model, quantize + $"  bits: 4\n  group_size: {block}\n", file, "  format: onnx\n"));
                    folders[(model, name, block)] = Calibrate(path, work).Output;
                    Console.WriteLine($"{file}: done");
                }
                string gguf = $"onnx-{model}-{tag}-gguf-q4_0";
                string ggufPath = Path.Combine(manifests, gguf + ".yaml");
                File.WriteAllText(ggufPath, Manifest(model, quantize, gguf, "  format: gguf\n  gguf: { type: q4_0 }\n"));
                ggufs[(model, name)] = Path.Combine(Calibrate(ggufPath, work).Output, $"{gguf}-q4_0.gguf");
            }
        foreach (var model in models)
        {
            string dir = Path.Combine(shared, "models", model);
            var ids = HfTokenizer.Load(dir).Encode(File.ReadAllText(wiki));
            double fp;
            using (var m = ModelLoader.Open(dir)) fp = Perplexity.Windows(m, ids, 512, windows).Perplexity;
            var config = ModelLoader.LoadConfig(dir);
            report.AppendLine(string.Create(CultureInfo.InvariantCulture, $"### {model} (float32 {fp:F3}; safetensors {new FileInfo(Path.Combine(dir, "model.safetensors")).Length:N0} bytes)"));
            report.AppendLine();
            report.AppendLine("| calibrator | block | bytes | PPL ORT | PPL eval | ORT GenAI tokens/s | llama.cpp Q4_0 tokens/s | Q4_0 PPL eval |");
            report.AppendLine("|---|---|---|---|---|---|---|---|");
            foreach (var (name, _) in Methods)
                foreach (int block in new[] { 32, 128 })
                {
                    string folder = folders[(model, name, block)];
                    double ort = OnnxRuntimeChecks.Perplexity(folder, ids, 512, windows, config.NumLayers, config.NumKvHeads, config.HeadDim);
                    double ours;
                    using (var m = ModelLoader.Open(folder)) ours = Perplexity.Windows(m, ids, 512, windows).Perplexity;
                    long bytes = new FileInfo(Path.Combine(folder, "model.onnx")).Length + new FileInfo(Path.Combine(folder, "model.onnx.data")).Length;
                    double genai = Best(() => GenAiSeconds(folder, config.BosTokenId ?? 1));
                    string llama = "", q40 = "";
                    if (block == 32)
                    {
                        double l = Best(() => LlamaSeconds(ggufs[(model, name)], config.BosTokenId ?? 1));
                        llama = (Generated / l).ToString("F0", CultureInfo.InvariantCulture);
                        using var g = ModelLoader.Open(ggufs[(model, name)]);
                        q40 = Perplexity.Windows(g, ids, 512, windows).Perplexity.ToString("F3", CultureInfo.InvariantCulture);
                    }
                    report.AppendLine(string.Create(CultureInfo.InvariantCulture,
                        $"| {name} | {block} | {bytes:N0} | {ort:F3} | {ours:F3} | {Generated / genai:F0} | {llama} | {q40} |"));
                }
            report.AppendLine();
        }
        Speed(report, shared, work);
        Directory.Delete(work, true);
        return report.ToString();
    }

    /// <summary>Generation speed where the matmuls, not per-token overhead, decide: a TinyLlama-shaped
    /// checkpoint (2 blocks of hidden 2048, intermediate 5632, GQA 32/4, vocab 32000; random bf16 weights,
    /// so no perplexity), RTN W4 in blocks of 32 both ways.</summary>
    static void Speed(StringBuilder report, string shared, string work)
    {
        var shape = new BigModel.Shape("TinyLlama-shaped", 2048, 5632, 32, 4);
        string model = BigModel.Write(Path.Combine(work, "tinyllama"), shape, 2, shared);
        string Yaml(string name, string output) =>
            $"version: 1\nmodel: {model}\nquantize:\n  method: rtn\n  bits: 4\n  group_size: 32\noutput:\n  name: {name}\n{output}";
        string onnxYaml = Path.Combine(work, "speed-onnx.yaml"), ggufYaml = Path.Combine(work, "speed-gguf.yaml");
        File.WriteAllText(onnxYaml, Yaml("speed-onnx", "  format: onnx\n"));
        File.WriteAllText(ggufYaml, Yaml("speed-gguf", "  format: gguf\n  gguf: { type: q4_0 }\n").Replace("  bits: 4\n  group_size: 32\n", ""));
        string folder = Calibrate(onnxYaml, work).Output;
        string gguf = Path.Combine(Calibrate(ggufYaml, work).Output, "speed-gguf-q4_0.gguf");
        long onnxBytes = new FileInfo(Path.Combine(folder, "model.onnx")).Length + new FileInfo(Path.Combine(folder, "model.onnx.data")).Length;
        double genai = Best(() => GenAiSeconds(folder, 1)), llama = Best(() => LlamaSeconds(gguf, 1));
        report.AppendLine("### Generation speed on a TinyLlama-shaped checkpoint");
        report.AppendLine();
        report.AppendLine("2 blocks of hidden 2048, intermediate 5632, 32/4 heads, vocab 32000, random bf16 weights (no perplexity); RTN W4, blocks of 32");
        report.AppendLine("both ways, each tool's defaults otherwise: our ONNX has the head int8 (the embedding fp32, read one row per token), llama.cpp's");
        report.AppendLine("Q4_0 mix stores token_embd Q4_0 and output Q6_K. The head alone is 65.5M weights, as many as 1.5 blocks.");
        report.AppendLine();
        report.AppendLine("| runtime | file | bytes | tokens/s |");
        report.AppendLine("|---|---|---|---|");
        report.AppendLine(string.Create(CultureInfo.InvariantCulture, $"| ORT GenAI 0.18.0 | ONNX int4 (MatMulNBits) | {onnxBytes:N0} | {Generated / genai:F0} |"));
        report.AppendLine(string.Create(CultureInfo.InvariantCulture, $"| llama.cpp (LLamaSharp 0.30.0) | GGUF Q4_0 | {new FileInfo(gguf).Length:N0} | {Generated / llama:F0} |"));
        report.AppendLine();
    }

    static JobResult Calibrate(string manifest, string work) => QuantizeJob.Run(ManifestParser.Load(manifest), work);

    static double Best(Func<double> seconds) => Enumerable.Range(0, 3).Select(_ => seconds()).Min();

    /// <summary>Seconds ORT GenAI takes to decode <see cref="Generated"/> tokens after BOS (model loaded before the clock starts).</summary>
    static double GenAiSeconds(string folder, int bos)
    {
        using var model = new GenAi.Model(folder);
        using var parameters = new GenAi.GeneratorParams(model);
        parameters.SetSearchOption("max_length", 1 + Generated);
        parameters.SetSearchOption("min_length", 1 + Generated);
        using var generator = new GenAi.Generator(model, parameters);
        var sw = Stopwatch.StartNew();
        generator.AppendTokens([bos]);
        while (!generator.IsDone()) generator.GenerateNextToken();
        return sw.Elapsed.TotalSeconds;
    }

    /// <summary>The same in llama.cpp: BOS, then argmax token by token (no sampler).</summary>
    static double LlamaSeconds(string gguf, int bos)
    {
        using var weights = LlamaCpp.Load(gguf, out var parameters, 1 + Generated + 1);
        using var context = weights.CreateContext(parameters);
        var batch = new LLamaBatch();
        batch.Add((LLamaToken)bos, 0, LLamaSeqId.Zero, true);
        var sw = Stopwatch.StartNew();
        for (int n = 0, position = 1; n < Generated; n++)
        {
            if (context.NativeHandle.Decode(batch) != DecodeResult.Ok) throw new InvalidOperationException("llama_decode failed");
            var logits = context.NativeHandle.GetLogitsIth(batch.TokenCount - 1);
            int best = 0;
            for (int v = 1; v < logits.Length; v++) if (logits[v] > logits[best]) best = v;
            batch.Clear();
            batch.Add((LLamaToken)best, position++, LLamaSeqId.Zero, true);
        }
        return sw.Elapsed.TotalSeconds;
    }

    static string Manifest(string model, string quantize, string name, string output) =>
        $"# dotnet run -c Release --project src/Tool -- run bench/quality/<this file>\nversion: 1\nmodel: ../../../shared/models/{model}\n" +
        "calibration:\n  data: ../../../shared/data/wikitext2-tokenized/valid.tokens\n  samples: 128\n  sequence_length: 256\n  seed: 0\n" +
        $"quantize:\n{quantize}output:\n  name: {name}\n{output}";
}
