using DotQuant.Engine.Awq;
using DotQuant.Engine.Calibration;
using DotQuant.Runtime;
using DotQuant.Engine.Evaluation;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.IO;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Quantizers;
using DotQuant.Engine.Tokenization;
using DotQuant.Tests;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace DotQuant.Engine.Tests;

/// <summary>AWQ (spec §6, checks §9.6): folding the chosen scales leaves the float block's function
/// unchanged (GQA's o_proj and fused projections included), α = 0 without clipping is round-to-nearest
/// byte for byte, and AWQ beats round-to-nearest at 3 bits.</summary>
public class AwqTests(ITestOutputHelper output)
{
    static string LlamaTiny => Path.Combine(SharedPaths.Root, "models", "llama-tiny");

    /// <summary>Spec §9.6.2: scales applied without quantization (clipping off) leave every block's output
    /// as it was, in fp32, for llama-tiny (GQA: 4 heads over 2 KV heads) and synthetic Qwen3 (q/k norms)
    /// and Phi-3 (fused qkv and gate_up).</summary>
    [Theory]
    [InlineData("llama-tiny")]
    [InlineData("qwen3")]
    [InlineData("phi3")]
    public void Folding_the_scales_leaves_the_float_blocks_output(string family)
    {
        using var dir = new TempDir();
        string path = family == "llama-tiny" ? LlamaTiny : dir.File(family);
        if (family != "llama-tiny") SyntheticModel.Write(path, SyntheticFamilies.Spec(family) with { VocabSize = 320 });
        using var model = ModelLoader.Open(path);
        var rng = new SplitMix64(5);
        var ids = Enumerable.Range(0, 4).Select(_ => Enumerable.Range(0, 64).Select(_ => rng.NextBelow(model.Config.VocabSize)).ToArray()).ToList();
        using var stream = ActivationStream.Embed(model, ids);
        using var contexts = new ForwardContexts(model);
        var transform = new AwqTransform(new AwqOptions { Clip = false, Grid = 4 });
        double worst = 0;
        int changed = 0;
        for (int b = 0; b < model.BlockCount; b++)
        {
            using var block = model.LoadBlock(b);
            using var x = stream.Input(0);
            var ctx = contexts.For(x.shape[1]);
            using var before = block.Forward(x, ctx);
            var work = new BlockWork
            {
                Model = model, Block = block, Stream = stream, Contexts = contexts, Scratch = dir.Path,
                Planned = block.Linears.Select(l => l.Name).ToHashSet(),
            };
            var o = new SolverOptions { Kind = SolverKind.Rtn, Bits = 3, GroupSize = 32 };
            var stored = transform.Apply(work, _ => o);
            changed += stored.Count;
            using var after = block.Forward(x, ctx);
            double rel = after.sub(before).abs().max().item<float>() / before.abs().max().item<float>();
            worst = Math.Max(worst, rel);
            stream.Advance(block, contexts);
        }
        output.WriteLine($"{family}: largest relative change of a block output {worst:E2}; {changed} stored tensors changed");
        Assert.True(worst < 1e-5, $"folding changed a block's output by {worst:E2} relative");
        Assert.True(changed >= model.BlockCount * 4, "the transform must report the norms and weights it changed");
    }

    static string Manifest(string quantize, int bits, string name, string format = "dotquant") =>
        $"version: 1\nmodel: {LlamaTiny}\ncalibration:\n  data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")}\n  samples: 16\n  sequence_length: 128\n" +
        $"quantize:\n  method: rtn\n  bits: {bits}\n  group_size: 128\n{quantize}output:\n  name: {name}\n  format: {format}\n" +
        $"evaluate:\n  perplexity: {{ data: {SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt")}, sequence_length: 256, max_sequences: 16 }}\n";

    static JobResult Run(TempDir dir, string quantize, int bits, string name)
    {
        File.WriteAllText(dir.File(name + ".yaml"), Manifest(quantize, bits, name));
        return QuantizeJob.Run(ManifestParser.Load(dir.File(name + ".yaml")), dir.File("runs"));
    }

    /// <summary>Spec §9.6.1: α = 0 gives s = 1, so without the clip step AWQ is round-to-nearest: the same tensors.</summary>
    [Fact]
    public void Alpha_zero_without_clipping_is_round_to_nearest()
    {
        using var dir = new TempDir();
        var rtn = Run(dir, "", 4, "rtn");
        var awq = Run(dir, "  awq: { grid: 1, clip: false }\n", 4, "awq");
        using var a = Checkpoint.Open(rtn.Output);
        using var b = Checkpoint.Open(awq.Output);
        Assert.Equal(a.Names, b.Names);
        foreach (var name in a.Names)
        {
            using var x = a.LoadStored(name);
            using var y = b.LoadStored(name);
            Assert.True(x.dtype == y.dtype && x.shape.SequenceEqual(y.shape) && x.eq(y).all().item<bool>(), $"{name} differs");
        }
        Assert.Equal(rtn.After!.Perplexity, awq.After!.Perplexity);
    }

    [Fact]
    public void Awq_beats_round_to_nearest_at_three_bits()
    {
        using var dir = new TempDir();
        var rtn = Run(dir, "", 3, "rtn3");
        var awq = Run(dir, "  awq: true\n", 3, "awq3");
        output.WriteLine($"llama-tiny W3 g128: float {rtn.Before!.Perplexity:F3}, RTN {rtn.After!.Perplexity:F3}, AWQ {awq.After!.Perplexity:F3}");
        Assert.True(awq.After.Perplexity < rtn.After.Perplexity, $"AWQ {awq.After.Perplexity:F3} should beat RTN {rtn.After.Perplexity:F3}");
    }

    [Theory]
    [InlineData("  method: spqr\n  awq: true\n", "DQ0006")]
    [InlineData("  method: gptq\n  rotate: hadamard\n  awq: true\n", "DQ0006")]
    [InlineData("  method: gptq\n  hessian: output_adaptive\n  awq: true\n", "DQ0006")]
    [InlineData("  method: rtn\n  awq: { max_shrink: 1 }\n", "DQ0004")]
    [InlineData("  method: rtn\n  awq: { grid: 0 }\n", "DQ0004")]
    [InlineData("  method: rtn\n  awq: { alpha: 0.5 }\n", "DQ0002")]
    [InlineData("  method: rtn\n  awq: maybe\n", "DQ0003")]
    public void Impossible_awq_settings_are_refused(string quantize, string code)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("q.yaml"),
            $"version: 1\nmodel: {LlamaTiny}\ncalibration:\n  data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")}\n" +
            $"quantize:\n{quantize}output:\n  name: out\n");
        var e = Assert.Throws<DotQuantException>(() => ManifestParser.Load(dir.File("q.yaml")));
        Assert.Equal(code, e.Code);
    }
}
