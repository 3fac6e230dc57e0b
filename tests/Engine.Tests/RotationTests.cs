using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using DotQuant.Engine.Rotation;
using DotQuant.Tests;
using Xunit;
using static TorchSharp.torch;

namespace DotQuant.Engine.Tests;

public class RotationTests
{
    /// <summary>Every size the shared model (64, 172, head 8) and Llama-2-7B/13B (4096, 11008, 5120,
    /// 13824, head 128) use, plus the spec's table (576, 896, 960, 1536, 2560, 4864, 5632, 14336, 18944).</summary>
    [Theory]
    [InlineData(8)] [InlineData(64)] [InlineData(172)] [InlineData(128)] [InlineData(4096)] [InlineData(5120)]
    [InlineData(11008)] [InlineData(13824)] [InlineData(576)] [InlineData(896)] [InlineData(960)] [InlineData(1536)]
    [InlineData(2560)] [InlineData(4864)] [InlineData(5632)] [InlineData(14336)] [InlineData(18944)]
    public void Hadamard_matrices_are_orthogonal_with_entries_plus_minus_one(int n)
    {
        var plan = Hadamard.Plan(n);
        Assert.False(plan.BlockDiagonal, $"{n}: {plan}");
        using var k = Hadamard.Small(plan.K, plan.K == 1 ? "sylvester" : plan.Kind);
        // H_K·H_Kᵀ = K·I exactly; the Kronecker product with Sylvester H_M is then n·I.
        using var kk = k.matmul(k.t());
        Assert.True(kk.eq(eye(plan.K, dtype: ScalarType.Float64).mul(Scalars.Of(plan.K))).all().item<bool>(), $"{n}: {plan}");
        Assert.True(k.abs().eq(Scalars.Of(1L)).all().item<bool>());
        if (n <= 5632)
        {
            using var h = Hadamard.Matrix(plan);
            using var hh = h.matmul(h.t());
            Assert.True(hh.eq(eye(n, dtype: ScalarType.Float64).mul(Scalars.Of(n))).all().item<bool>(), $"{n}: {plan}");
        }
    }

    [Fact]
    public void Size_172_uses_the_Goethals_Seidel_matrix_and_13696_falls_back()
    {
        Assert.Equal("goethals-seidel", Hadamard.Plan(172).Kind);
        Assert.Equal((172, 64), (Hadamard.Plan(11008).K, Hadamard.Plan(11008).M));
        Assert.Equal((28, 32), (Hadamard.Plan(896).K, Hadamard.Plan(896).M));
        Assert.True(Hadamard.Plan(13696).BlockDiagonal);
    }

    [Theory]
    [InlineData(48)] [InlineData(576)] [InlineData(960)] [InlineData(1536)] [InlineData(172)] [InlineData(11008)] [InlineData(13696)]
    public void Fast_transform_equals_the_dense_product(int n)
    {
        var plan = Hadamard.Plan(n);
        using var t = new Hadamard.Transform(plan);
        using var x = randn(3, n, dtype: ScalarType.Float64, generator: new Generator(7));
        using var h = Hadamard.Matrix(plan);
        using var dense = x.matmul(h).div(Scalars.Of(plan.Norm));
        using var fast = t.Apply(x.to(ScalarType.Float32)).to(ScalarType.Float64);
        double err = (fast - dense).abs().max().item<double>();
        Assert.True(err < 1e-4, $"{n}: {err}");
    }

    [Fact]
    public void Rotated_float_model_gives_the_same_logits()
    {
        string dir = SharedPaths.Stories260K;
        var config = ModelConfig.Load(dir);
        using var ckpt = Checkpoint.Open(dir);
        using var reference = ModelLoader.Load(config, ckpt);
        using var scratch = new TempDir();
        using var rotated = QuaRot.Apply(config, ckpt, new RotationOptions(Seed: 3), scratch.Path);
        using var model = ModelLoader.Load(rotated.Config, rotated);
        Assert.True(rotated.Config.DownProjHadamard);
        Assert.False(rotated.Config.TieWordEmbeddings);

        using var ids = randint(0, config.VocabSize, [2, 128], dtype: ScalarType.Int64, generator: new Generator(1));
        using var a = reference.Forward(ids);
        using var b = model.Forward(ids);
        double rel = (a - b).abs().max().item<float>() / a.abs().max().item<float>();
        Assert.True(rel < 1e-4, $"relative logit change {rel}");

        // The head is a tensor of its own after untying, and the rotation really changed the weights.
        using var e = rotated.Load("model.embed_tokens.weight");
        using var hw = rotated.Load("lm_head.weight");
        Assert.False(e.allclose(hw));
        using var w0 = ckpt.Load("model.layers.0.mlp.down_proj.weight");
        using var w1 = rotated.Load("model.layers.0.mlp.down_proj.weight");
        Assert.False(w0.allclose(w1, 1e-3, 1e-3));
    }

    [Fact]
    public void Rotation_makes_weights_incoherent_and_embedding_mean_subtraction_breaks_exactness()
    {
        string dir = SharedPaths.Stories260K;
        var config = ModelConfig.Load(dir);
        using var ckpt = Checkpoint.Open(dir);
        using var scratch = new TempDir();
        using var rotated = QuaRot.Apply(config, ckpt, new RotationOptions(), scratch.File("a"));
        static double Mu(Tensor w) => w.abs().max().item<float>() * Math.Sqrt(w.numel()) / w.norm().item<float>();
        var report = new List<string>();
        int lower = 0, total = 0;
        for (int i = 0; i < config.NumLayers; i++)
            // Readers of the stream (q/k/gate/up) also absorb the folded RMSNorm scales, which on this tiny
            // model can make them more coherent; the writers and v (rotated on both sides) must improve.
            foreach (var name in new[] { "self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj" })
            {
                using var w0 = ckpt.Load($"model.layers.{i}.{name}.weight");
                using var w1 = rotated.Load($"model.layers.{i}.{name}.weight");
                double m0 = Mu(w0), m1 = Mu(w1);
                report.Add($"{i}.{name} {m0:F2}→{m1:F2}");
                total++;
                if (m1 < m0) lower++;
            }
        Assert.True(lower == total, string.Join("; ", report));

        using var meanFree = QuaRot.Apply(config, ckpt, new RotationOptions(SubtractEmbeddingMean: true), scratch.File("b"));
        using var reference = ModelLoader.Load(config, ckpt);
        using var model = ModelLoader.Load(meanFree.Config, meanFree);
        using var ids = randint(0, config.VocabSize, [1, 64], dtype: ScalarType.Int64, generator: new Generator(2));
        using var a = reference.Forward(ids);
        using var b = model.Forward(ids);
        double rel = (a - b).abs().max().item<float>() / a.abs().max().item<float>();
        Assert.True(rel > 1e-4, $"mean subtraction should change RMSNorm models' logits, changed {rel}");
    }
}
