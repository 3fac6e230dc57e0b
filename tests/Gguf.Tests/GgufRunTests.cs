using System.Security.Cryptography;
using DotQuant.Engine.Calibration;
using DotQuant.Engine.Evaluation;
using DotQuant.Engine.Gguf;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Runtime;
using DotQuant.Engine.Tokenization;
using DotQuant.Tests;

namespace DotQuant.Gguf.Tests;

/// <summary>`run` with format gguf, end to end, checked by llama.cpp: the file it writes loads, llama.cpp's
/// perplexity over the run's evaluation windows equals ours, greedy generation is the same 64 tokens,
/// and an interrupted run resumes to the same bytes.</summary>
public class GgufRunTests
{
    static string Model(string name) => Path.Combine(SharedPaths.Root, "models", name);
    static string EvalText => SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt");

    static string Manifest(string modelPath, string quantize, string type) =>
        $"version: 1\nmodel: {modelPath}\ncalibration:\n  data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")}\n  samples: 16\n  sequence_length: 128\n" +
        $"quantize:\n{quantize}output:\n  name: out\n  format: gguf\n  gguf: {{ type: {type} }}\n" +
        $"evaluate:\n  perplexity: {{ data: {EvalText}, sequence_length: 128, max_sequences: 8 }}\n";

    [Theory]
    [InlineData("llama-tiny", "  method: gptq\n", "q4_k_m", 1e-3)]
    [InlineData("llama-tiny", "  method: gptaq\n  compensation_aware: true\n", "q3_k_m", 1e-3)]
    [InlineData("llama-tiny", "  method: rtn\n", "q4_0", 1e-3)]
    // AWQ's folded norms and scaled weights (the F16-kept ones too) are what llama.cpp must run.
    [InlineData("llama-tiny", "  method: rtn\n  awq: true\n", "q4_k_m", 1e-3)]
    // llama.cpp rounds activations to 8 bits in its k-quant matmuls (our eval does not). This file sat just
    // inside 0.1% until OAC's chunked H̄ (changes at fp32 rounding, issue 13) moved a few codes; it then
    // measured 0.101%. Twice the bound still catches a wrong byte (a mis-packed block costs far more).
    [InlineData("llama-tiny", "  method: gptq\n  hessian: output_adaptive\n", "q5_k_m", 2e-3)]
    [InlineData("stories260K", "  method: none\n", "f16", 1e-3)]
    [InlineData("stories260K", "  method: gptq\n  act_order: true\n  static_groups: true\n", "q4_1", 1e-3)]
    public void LlamaCppRunsWhatTheRunWrote(string model, string quantize, string type, double tolerance)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("quant.yaml"), Manifest(Model(model), quantize, type));
        var m = ManifestParser.Load(dir.File("quant.yaml"));
        var result = QuantizeJob.Run(m, dir.File("runs"));
        string file = Path.Combine(result.Output, $"out-{type}.gguf");
        Assert.True(File.Exists(file), $"{file} was not written");
        Assert.True(File.Exists(Path.Combine(result.Output, "dotquant.json")));

        // Our evaluation of the written file (what the run reported) against llama.cpp's forward.
        var ids = HfTokenizer.Load(Model(model)).Encode(File.ReadAllText(EvalText));
        using (var written = ModelLoader.Open(file))
        {
            var ours = Perplexity.Windows(written, ids, 128, 8);
            Assert.Equal(result.After!.Perplexity, ours.Perplexity, 12);
        }
        double theirs = LlamaCpp.Perplexity(file, ids, 128, 8);
        Assert.True(Math.Abs(result.After.Perplexity / theirs - 1) < tolerance, $"eval {result.After.Perplexity:F4} vs llama.cpp {theirs:F4}");
        if (type != "f16")
            Assert.True(result.After.Perplexity > result.Before!.Perplexity * 0.98, "quantization should not be free");

        // Greedy generation: the same 64 tokens from both forwards.
        int[] prompt = [1, .. ids.Take(8)];
        int[] llama = LlamaCpp.Greedy(file, prompt, 64);
        using (var written = ModelLoader.Open(file))
        {
            var ourTokens = TextGenerator.Greedy(written, prompt, 64);
            int k = 0;
            while (k < 64 && ourTokens[k] == llama[k]) k++;
            if (k < 64)
            {
                // Where they part, the two forwards must agree on every logit within what llama.cpp's
                // 8-bit-quantized activations explain (2% of the logit range: measured up to ~1% on the
                // 64-wide stories260K, 0.3% on llama-tiny), and the two candidates must be a tie within
                // that difference. Which of two tied tokens wins depends on the last bits of both sides'
                // kernels (an AVX2-only CPU parted at token 0 of the GPTAQ q3_k_m file: margin 0.0066,
                // largest difference 0.0758), so a tie may part them anywhere; a wrong weight may not.
                int[] seq = [.. prompt, .. llama.Take(k)];
                using var w = LlamaCpp.Load(file, out var parameters, 256);
                var theirs2 = LlamaCpp.Logits(w, parameters, seq)[^1];
                using var t = TorchSharp.torch.tensor(seq.Select(x => (long)x).ToArray(), [1, seq.Length]);
                using var logits = written.Forward(t);
                var ours2 = logits[0, -1].data<float>().ToArray();
                double gap = theirs2[llama[k]] - theirs2[ourTokens[k]];
                double diff = theirs2.Zip(ours2, (a, b) => (double)Math.Abs(a - b)).Max();
                double range = ours2.Max() - ours2.Min();
                Assert.True(diff <= 0.02 * range && gap <= 2 * diff,
                    $"greedy generation parts at token {k}: llama.cpp {llama[k]}, ours {ourTokens[k]} (llama.cpp's margin {gap:G3}, largest logit difference {diff:G3}, logit range {range:G3})");
            }
        }
    }

    /// <summary>Each family beyond Llama: GPTQ W4 on llama.cpp's Q4_K blocks (rows of 256) over a synthetic
    /// checkpoint with a byte-level vocabulary; llama.cpp scores the file as our eval does (within 0.1%).
    /// Gemma 3 within 1%: llama.cpp's quantized matmuls round activations to 8 bits, and on this six-layer
    /// model that alone moves its perplexity of llama.cpp's own Q4_K_M file by 0.12% (Q8_0: 0.16%) from the
    /// same file's float-arithmetic eval, and of the GPTQ file by 0.58% (measured; the F32 file agrees
    /// within 0.002%, LlamaCppChecks).</summary>
    [Theory]
    [InlineData("qwen3", 1e-3)]
    [InlineData("phi3", 1e-3)]
    [InlineData("gemma2", 1e-3)]
    [InlineData("gemma3_text", 1e-2)]
    [InlineData("gpt2", 1e-3)]
    public void EachFamilyRunsGptqToAGgufLlamaCppScoresAlike(string family, double tolerance)
    {
        using var dir = new TempDir();
        string folder = dir.File(family);
        SyntheticModel.Write(folder, SyntheticFamilies.Spec(family, hidden: 256, tokenizerText: File.ReadAllText(SharedPaths.Data("tinystories", "stories-sample.txt"))));
        File.WriteAllText(dir.File("quant.yaml"), Manifest(folder, "  method: gptq\n", "q4_k_m"));
        var result = QuantizeJob.Run(ManifestParser.Load(dir.File("quant.yaml")), dir.File("runs"));
        string file = Path.Combine(result.Output, "out-q4_k_m.gguf");
        var ids = HfTokenizer.Load(folder).Encode(File.ReadAllText(EvalText));
        using (var written = ModelLoader.Open(file))
            Assert.Equal(result.After!.Perplexity, Perplexity.Windows(written, ids, 128, 8).Perplexity, 12);
        double theirs = LlamaCpp.Perplexity(file, ids, 128, 8);
        Assert.True(Math.Abs(result.After!.Perplexity / theirs - 1) < tolerance, $"{family}: eval {result.After.Perplexity:F4} vs llama.cpp {theirs:F4}");
        Assert.NotEqual(result.Before!.Perplexity, result.After.Perplexity);
    }

    [Fact]
    public void StoppedAfterABlockAndResumedGivesTheSameFile()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("quant.yaml"), Manifest(Model("llama-tiny"), "  method: gptq\n", "q4_k_m"));
        var m = ManifestParser.Load(dir.File("quant.yaml"));
        var whole = QuantizeJob.Run(m, dir.File("whole"));
        using (var cts = new CancellationTokenSource())
        {
            Assert.ThrowsAny<OperationCanceledException>(() => QuantizeJob.Run(m, dir.File("stopped"), e =>
            {
                if (e is BlockEvent { Block: 2 }) cts.Cancel();
            }, cts.Token, new RunOptions { Resume = true }));
        }
        var resumed = QuantizeJob.Run(m, dir.File("stopped"), null, default, new RunOptions { Resume = true });
        Assert.Equal(3, resumed.ResumedBlocks);
        Assert.Equal(Hash(Path.Combine(whole.Output, "out-q4_k_m.gguf")), Hash(Path.Combine(resumed.Output, "out-q4_k_m.gguf")));
        Assert.Equal(whole.After!.Perplexity, resumed.After!.Perplexity);
    }

    static string Hash(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));
}
