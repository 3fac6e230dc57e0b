using System.Text.Json.Nodes;
using DotQuant.Engine.Calibration;
using DotQuant.Engine.Evaluation;
using DotQuant.Engine.Formats;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;
using DotQuant.Tests;
using Xunit;

namespace DotQuant.Engine.Tests;

/// <summary>End to end on stories260K: each new calibrator and the rotation produce a DotQuant
/// package that the runtime reads back to exactly the weights the run evaluated.</summary>
public class LowBitPipelineTests
{
    static string Manifest(TempDir dir, string quantize, string name) =>
        $"version: 1\nmodel: {SharedPaths.Stories260K}\ncalibration:\n  data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")}\n  samples: 12\n  sequence_length: 64\n" +
        $"quantize:\n{quantize}output:\n  name: {name}\nevaluate:\n  perplexity:\n    data: {SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt")}\n    sequence_length: 256\n    max_sequences: 6\n";

    [Theory]
    [InlineData("  method: spqr\n  outliers: { relative_threshold: 1 }\n", "spqr")]
    [InlineData("  method: spqr\n  hessian: output_adaptive\n", "spqr")]
    [InlineData("  method: billm\n", "billm")]
    [InlineData("  method: billm\n  hessian: output_adaptive\n  output_adaptive: { fisher: token }\n", "billm")]
    [InlineData("  method: gptq\n  bits: 2\n  group_size: 16\n  hessian: output_adaptive\n", "grid")]
    [InlineData("  method: gptq\n  bits: 3\n  group_size: 16\n  rotate: hadamard\n", "grid")]
    [InlineData("  method: spqr\n  rotate: hadamard\n  hessian: output_adaptive\n  output_adaptive: { schedule: once }\n", "spqr")]
    public void Package_reproduces_the_evaluated_weights(string quantize, string kind)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("quant.yaml"), Manifest(dir, quantize, "out"));
        var result = QuantizeJob.Run(ManifestParser.Load(dir.File("quant.yaml")), dir.File("build"));
        var info = JsonNode.Parse(File.ReadAllText(Path.Combine(result.Output, QuantizedPackage.ManifestFile)))!;
        var quantized = info["layers"]!.AsArray().Where(l => (bool)l!["quantized"]!).ToList();
        Assert.Equal(35, quantized.Count);
        Assert.All(quantized, l => Assert.Equal(kind, (string)l!["kind"]!));
        double paper = (double)info["bits"]!["paper"]!, stored = (double)info["bits"]!["stored"]!;
        Assert.True(paper > 0 && stored >= paper - 1e-9, $"paper {paper}, stored {stored}");
        if (kind == "billm") Assert.InRange(paper, 1.0, 1.5);

        var tok = HfTokenizer.Load(result.Output);
        var ids = tok.Encode(File.ReadAllText(SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt")));
        using var model = ModelLoader.Load(result.Output);
        Assert.Equal(result.After!.Perplexity, Perplexity.Windows(model, ids, 256, 6).Perplexity);
        Assert.True(result.After.Perplexity > result.Before!.Perplexity);

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(result.Output, "config.json")))!;
        bool rotated = quantize.Contains("rotate");
        Assert.Equal(rotated, config["dotquant_rotation"] is not null);
        if (rotated)
        {
            Assert.False((bool)config["tie_word_embeddings"]!);
            Assert.Equal("hadamard", (string)config["dotquant_rotation"]!["down_proj_input"]!);
        }
    }

    [Fact]
    public void Bf16_streams_change_the_result_only_slightly()
    {
        using var dir = new TempDir();
        JobResult Run(string stream)
        {
            File.WriteAllText(dir.File(stream + ".yaml"), Manifest(dir, "  method: gptq\n  bits: 4\n  group_size: 16\n", stream)
                .Replace("  sequence_length: 64\n", $"  sequence_length: 64\n  stream_dtype: {stream}\n").Replace("max_sequences: 6", "max_sequences: 16"));
            return QuantizeJob.Run(ManifestParser.Load(dir.File(stream + ".yaml")), dir.File("build"));
        }
        var a = Run("fp32");
        var b = Run("bf16");
        Assert.Equal(a.Before!.Perplexity, b.Before!.Perplexity);
        Assert.NotEqual(a.After!.Perplexity, b.After!.Perplexity);           // the streams really were bf16
        Assert.True(Math.Abs(b.After.Perplexity / a.After.Perplexity - 1) < 0.03, $"{a.After.Perplexity} vs {b.After.Perplexity}");
        // The calibration losses agree per layer on average (single layers move a few percent).
        double ratio = a.Layers.Zip(b.Layers).Where(p => p.First.Quantized).Average(p => p.Second.Loss / p.First.Loss);
        Assert.InRange(ratio, 0.98, 1.02);
    }

    [Fact]
    public void Same_inputs_give_the_same_bytes()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("quant.yaml"), Manifest(dir, "  method: spqr\n  hessian: output_adaptive\n  rotate: hadamard\n", "out").Replace("evaluate:", "unused:").Split("unused:")[0]);
        var a = QuantizeJob.Run(ManifestParser.Load(dir.File("quant.yaml")), dir.File("a"));
        var b = QuantizeJob.Run(ManifestParser.Load(dir.File("quant.yaml")), dir.File("b"));
        foreach (var f in new[] { "model.safetensors", "config.json", QuantizedPackage.ManifestFile })
            Assert.Equal(File.ReadAllBytes(Path.Combine(a.Output, f)), File.ReadAllBytes(Path.Combine(b.Output, f)));
    }
}
