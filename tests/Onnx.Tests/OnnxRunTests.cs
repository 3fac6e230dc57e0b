using DotQuant.Engine.Calibration;
using DotQuant.Engine.Evaluation;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Runtime;
using DotQuant.Engine.Tokenization;
using DotQuant.Tests;

namespace DotQuant.Onnx.Tests;

/// <summary>`run` with format onnx, end to end, checked by ONNX Runtime and ONNX Runtime GenAI: the folder
/// loads, ORT's perplexity over the run's evaluation windows equals ours, GenAI's tokenizer gives our ids,
/// and GenAI's greedy generation is our 64 tokens.</summary>
[Collection("pipeline")]
public class OnnxRunTests
{
    static string Model(string name) => Path.Combine(SharedPaths.Root, "models", name);
    static string EvalText => SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt");

    static string Manifest(string modelPath, string quantize) =>
        $"version: 1\nmodel: {modelPath}\ncalibration:\n  data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")}\n  samples: 16\n  sequence_length: 128\n" +
        $"quantize:\n{quantize}output:\n  name: out\n  format: onnx\n" +
        $"evaluate:\n  perplexity: {{ data: {EvalText}, sequence_length: 128, max_sequences: 8 }}\n";

    [Theory]
    [InlineData("stories260K", "  method: gptq\n  bits: 4\n  group_size: 32\n")]
    public void OnnxRuntimeRunsWhatTheRunWrote(string model, string quantize)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("quant.yaml"), Manifest(Model(model), quantize));
        var result = QuantizeJob.Run(ManifestParser.Load(dir.File("quant.yaml")), dir.File("runs"));
        string folder = result.Output;
        foreach (var f in new[] { "model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "dotquant.json" })
            Assert.True(File.Exists(Path.Combine(folder, f)), $"{f} was not written");

        var ids = HfTokenizer.Load(Model(model)).Encode(File.ReadAllText(EvalText));
        using (var written = ModelLoader.Open(folder))
            Assert.Equal(result.After!.Perplexity, Perplexity.Windows(written, ids, 128, 8).Perplexity, 12);
        var c = ModelLoader.LoadConfig(folder);
        double theirs = OnnxRuntimeChecks.Perplexity(folder, ids, 128, 8, c.NumLayers, c.NumKvHeads, c.HeadDim);
        Assert.True(Math.Abs(result.After!.Perplexity / theirs - 1) < 1e-3, $"eval {result.After.Perplexity:F4} vs ONNX Runtime {theirs:F4}");
        Assert.True(result.After.Perplexity > result.Before!.Perplexity * 0.98, "quantization should not be free");

        int[] prompt = [1, .. ids.Take(8)];
        int[] genai = OnnxRuntimeChecks.Greedy(folder, prompt, 64);
        using (var written = ModelLoader.Open(folder))
            Assert.Equal(TextGenerator.Greedy(written, prompt, 64), genai);
    }

    /// <summary>Each family the graph covers, on a synthetic checkpoint built to exercise its differences:
    /// Qwen2's q/k/v biases, Mistral's sliding window (16 here, inside the 128-token windows), Qwen3's
    /// per-head q/k norms, Phi-3's fused projections, partial rotary and LongRoPE (original context 64,
    /// so evaluation uses the long factors and generation switches to them after 64 positions).</summary>
    [Theory]
    [InlineData("qwen2")]
    [InlineData("mistral")]
    [InlineData("qwen3")]
    [InlineData("phi3")]
    public void EachFamilyRunsInOnnxRuntimeAsInOurEval(string family)
    {
        using var dir = new TempDir();
        string folder = dir.File(family);
        string text = File.ReadAllText(SharedPaths.Data("tinystories", "stories-sample.txt"));
        var spec = family switch
        {
            "qwen2" => new SyntheticModel.Spec { ModelType = "qwen2", HiddenSize = 64, TokenizerText = text },
            "mistral" => new SyntheticModel.Spec { ModelType = "mistral", HiddenSize = 64, TokenizerText = text, ExtraConfig = new() { ["sliding_window"] = 16 } },
            _ => SyntheticFamilies.Spec(family, hidden: 64, tokenizerText: text),
        };
        SyntheticModel.Write(folder, spec);
        File.WriteAllText(dir.File("quant.yaml"), Manifest(folder, "  method: gptq\n  bits: 4\n  group_size: 32\n"));
        var result = QuantizeJob.Run(ManifestParser.Load(dir.File("quant.yaml")), dir.File("runs"));
        var ids = HfTokenizer.Load(folder).Encode(File.ReadAllText(EvalText));
        var c = ModelLoader.LoadConfig(result.Output);
        double theirs = OnnxRuntimeChecks.Perplexity(result.Output, ids, 128, 8, c.NumLayers, c.NumKvHeads, c.HeadDim);
        Assert.True(Math.Abs(result.After!.Perplexity / theirs - 1) < 1e-3, $"{family}: eval {result.After.Perplexity:F4} vs ONNX Runtime {theirs:F4}");
        Assert.NotEqual(result.Before!.Perplexity, result.After.Perplexity);

        int[] prompt = ids.Take(9).ToArray();
        int[] genai = OnnxRuntimeChecks.Greedy(result.Output, prompt, 64);
        using var written = ModelLoader.Open(result.Output);
        Assert.Equal(TextGenerator.Greedy(written, prompt, 64), genai);
    }
}
