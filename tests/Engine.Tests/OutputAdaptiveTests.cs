using DotQuant.Engine.Hessians;
using DotQuant.Engine.Models;
using DotQuant.Engine.Quantizers;
using DotQuant.Tests;
using Xunit;
using static TorchSharp.torch;

namespace DotQuant.Engine.Tests;

/// <summary>Spec §9.2: the output-adaptive Hessian.</summary>
public class OutputAdaptiveTests
{
    static Calibration.ActivationStream Stream(DecoderModel model, int sequences, int length, int seed)
    {
        var rng = new Calibration.SplitMix64(seed);
        var ids = Enumerable.Range(0, sequences).Select(_ => Enumerable.Range(0, length).Select(_ => rng.NextBelow(model.Config.VocabSize)).ToArray()).ToList();
        return Calibration.ActivationStream.Embed(model, ids);
    }

    [Fact]
    public void Autograd_path_equals_the_explicit_form_from_inputs_and_output_gradients()
    {
        using var model = ModelLoader.Open(SharedPaths.Stories260K);
        using var stream = Stream(model, 4, 32, 5);
        using var contexts = new Calibration.ForwardContexts(model);
        using var block = model.LoadBlock(0);
        var originals = block.Linears.Select(l => l.Weight.clone()).ToList();
        // From block 0: q/k/v share an input but get different output gradients, so different H̄.
        var targets = block.Linears.Select(l => l.Name).ToHashSet();
        var viaGrad = OutputAdaptiveHessian.Compute(model, 0, block, stream, targets, new OacOptions(), contexts, null);
        var explicitForm = OutputAdaptiveHessian.Compute(model, 0, block, stream, targets, new OacOptions { Fisher = FisherSample.SequenceExplicit }, contexts, null);
        foreach (var l in targets)
        {
            double rel = (viaGrad[l] - explicitForm[l]).abs().max().item<float>() / viaGrad[l].abs().max().item<float>();
            Assert.True(rel < 1e-5, $"{l}: {rel}");
        }
        var names = block.Linears.Select(l => l.Name).ToList();
        Assert.False(viaGrad[names[0]].allclose(viaGrad[names[1]]), "q and k must have their own H̄");
        // The working block's weights were put back untouched and require no gradient.
        Assert.All(block.Linears.Zip(originals), p => Assert.False(p.First.Weight.requires_grad));
        Assert.All(block.Linears.Zip(originals), p => Assert.True(p.First.Weight.eq(p.Second).all().item<bool>()));
        foreach (var t in viaGrad.Values.Concat(explicitForm.Values).Concat(originals)) t.Dispose();
    }

    [Fact]
    public void Row_aggregation_is_the_average_of_the_brute_force_Fisher_diagonal_blocks()
    {
        // m = 4, n = 3: the 12×12 empirical Fisher (1/N) Σ vec(G) vec(G)ᵀ (row-major vec); its four
        // diagonal 3×3 blocks averaged must equal (1/(N m)) Σ GᵀG.
        var g = new Generator(11);
        var grads = Enumerable.Range(0, 5).Select(_ => randn(4, 3, dtype: ScalarType.Float64, generator: g)).ToList();
        var fisher = zeros(12, 12, dtype: ScalarType.Float64);
        foreach (var G in grads) { var v = G.reshape(-1); fisher = fisher.Plus(v.outer(v)); }
        fisher = fisher.div(Scalars.Of(grads.Count));
        var average = zeros(3, 3, dtype: ScalarType.Float64);
        for (int i = 0; i < 4; i++) average = average.Plus(fisher.narrow(0, 3 * i, 3).narrow(1, 3 * i, 3));
        average = average.div(Scalars.Of(4L));
        var sum = zeros(3, 3, dtype: ScalarType.Float64);
        foreach (var G in grads) OutputAdaptiveHessian.Accumulate(sum, G);
        sum = sum.div(Scalars.Of(grads.Count * 4));
        Assert.True((sum - average).abs().max().item<double>() < 1e-12);
    }

    /// <summary>Synthetic per-sequence output gradients for the explicit forms.</summary>
    static (List<Tensor> X, Tensor Layer) Inputs(int sequences, int tokens, int n, Generator g)
    {
        var xs = Enumerable.Range(0, sequences).Select(_ => randn(tokens, n, dtype: ScalarType.Float64, generator: g)).ToList();
        var h = zeros(n, n, dtype: ScalarType.Float64);
        foreach (var x in xs) h = h.Plus(x.t().matmul(x));
        return (xs, h.mul(Scalars.Of(2.0 / sequences)));       // the layer-wise H = (2/N) Σ X Xᵀ
    }

    [Fact]
    public void Orthogonal_equal_norm_output_gradients_reduce_to_GPTQ_and_every_solver_agrees()
    {
        var g = new Generator(3);
        int N = 6, T = 12, n = 48, m = 16;
        var (xs, layer) = Inputs(N, T, n, g);
        // Δ_s = c·(orthonormal rows): Δ_s Δ_sᵀ = c² I, with c² = 2m so that H̄ = (2/N) Σ X Xᵀ exactly.
        var oac = zeros(n, n, dtype: ScalarType.Float64);
        foreach (var x in xs)
        {
            var (q, _) = linalg.qr(randn(m, m, dtype: ScalarType.Float64, generator: g));
            var delta = q.narrow(1, 0, T).t().mul(Scalars.Of(Math.Sqrt(2.0 * m)));      // [T, m]
            oac = oac.Plus(OutputAdaptiveHessian.SequenceTerm(x, delta));
        }
        oac = oac.div(Scalars.Of(N));
        Assert.True((oac - layer).abs().max().item<double>() / layer.abs().max().item<double>() < 1e-12);

        // Token Fisher: identical per-token gradients of equal norm give ‖δ‖²·X Xᵀ.
        var tokenOac = zeros(n, n, dtype: ScalarType.Float64);
        var same = randn(1, m, dtype: ScalarType.Float64, generator: g);
        foreach (var x in xs) tokenOac = tokenOac.Plus(OutputAdaptiveHessian.TokenTerm(x, same.expand(T, m)));
        double ratio = same.Squared().sum().item<double>() * N / 2;
        Assert.True((tokenOac.div(Scalars.Of(ratio)) - layer).abs().max().item<double>() / layer.abs().max().item<double>() < 1e-12);

        var w = randn(32, n, dtype: ScalarType.Float64, generator: g);
        foreach (var o in new[]
        {
            new SolverOptions { Bits = 3, GroupSize = 16, DType = ScalarType.Float64 },
            new SolverOptions { Kind = SolverKind.SpQR, Spqr = new SpqrOptions { Bits = 2, OutlierThreshold = 0.5, DType = ScalarType.Float64 } },
            new SolverOptions { Kind = SolverKind.BiLLM, Billm = new BillmOptions { DType = ScalarType.Float64 } },
        })
        {
            using var a = Solvers.Solve(w, layer, null, o, "layer");
            using var b = Solvers.Solve(w, oac, null, o, "oac");
            using var c = Solvers.Solve(w, layer.mul(Scalars.Of(37L)), null, o, "scaled");
            Assert.True(a.Dequantize(ScalarType.Float64).allclose(b.Dequantize(ScalarType.Float64), 0, 1e-9), $"{o.Kind}: OAC vs layer-wise");
            Assert.True(a.Dequantize(ScalarType.Float64).allclose(c.Dequantize(ScalarType.Float64), 0, 1e-9), $"{o.Kind}: H vs 37·H");
        }
    }

    [Fact]
    public void Uniform_output_gradients_give_a_rank_N_Hessian_that_only_damping_makes_solvable()
    {
        var g = new Generator(4);
        int N = 3, T = 20, n = 24;
        var (xs, _) = Inputs(N, T, n, g);
        var delta = randn(1, 8, dtype: ScalarType.Float64, generator: g).expand(T, 8);
        var h = zeros(n, n, dtype: ScalarType.Float64);
        foreach (var x in xs) h = h.Plus(OutputAdaptiveHessian.SequenceTerm(x, delta));
        Assert.Equal(N, (long)linalg.matrix_rank(h, rtol: 1e-10).item<long>());
        var (_, info) = linalg.cholesky_ex(h, false);
        Assert.NotEqual(0, info.item<int>());
        var warnings = new List<string>();
        var factor = InverseCholesky.Factor(h, 0, "rank-deficient", warnings.Add);
        Assert.True(factor.Retries > 0 && factor.Damp > 0);
        Assert.Single(warnings);
        using var q = Solvers.Solve(randn(8, n, dtype: ScalarType.Float64, generator: g), h, null, new SolverOptions { Bits = 4, Damp = 0, DType = ScalarType.Float64 }, "rank-deficient");
        Assert.True(q.Dequantize().isfinite().all().item<bool>());
    }
}

/// <summary>The chunked H̄ against the definition computed the slow way: one sequence at a time through
/// the whole model with autograd, G_s read from W.grad (what the implementation did before chunks).</summary>
public class OutputAdaptiveChunkTests
{
    [Fact]
    public void Each_blocks_H_bar_is_handed_over_as_the_backward_sweep_leaves_it_with_the_same_bits()
    {
        using var model = ModelLoader.Open(SharedPaths.Stories260K);
        var rng = new Calibration.SplitMix64(4);
        var ids = Enumerable.Range(0, 3).Select(_ => Enumerable.Range(0, 24).Select(_ => rng.NextBelow(model.Config.VocabSize)).ToArray()).ToList();
        using var stream = Calibration.ActivationStream.Embed(model, ids);
        using var contexts = new Calibration.ForwardContexts(model);
        var targets = Enumerable.Range(0, model.BlockCount).SelectMany(b => model.LinearLayout(b).SelectMany(g => g)).Select(l => l.Name).ToHashSet();
        var whole = OutputAdaptiveHessian.Compute(model, 0, null, stream, targets, new OacOptions(), contexts, null);
        var handed = new List<(int Block, Dictionary<string, Tensor> H)>();
        var rest = OutputAdaptiveHessian.Compute(model, 0, null, stream, targets, new OacOptions(), contexts, null, default, (b, h) => handed.Add((b, h)));
        Assert.Empty(rest);
        Assert.Equal(Enumerable.Range(0, model.BlockCount).Reverse(), handed.Select(h => h.Block));
        foreach (var (b, h) in handed)
        {
            Assert.Equal(model.LinearLayout(b).SelectMany(g => g).Select(l => l.Name).Order(), h.Keys.Order());
            Assert.All(h, kv => Assert.True(kv.Value.eq(whole[kv.Key]).all().item<bool>(), kv.Key));
        }
        foreach (var t in whole.Values.Concat(handed.SelectMany(h => h.H.Values))) t.Dispose();
    }

    [Theory]
    [InlineData(FisherLabels.Empirical)]
    [InlineData(FisherLabels.Sampled)]
    public void Chunked_H_bar_equals_per_sequence_autograd_to_fp32_rounding(FisherLabels labels)
    {
        using var model = ModelLoader.Open(SharedPaths.Stories260K);
        var rng = new Calibration.SplitMix64(9);
        // 5 sequences of 40 tokens: one chunk; of the 4 blocks after the first, targets in blocks 1 and 3.
        var ids = Enumerable.Range(0, 5).Select(_ => Enumerable.Range(0, 40).Select(_ => rng.NextBelow(model.Config.VocabSize)).ToArray()).ToList();
        using var contexts = new Calibration.ForwardContexts(model);
        using var block0 = model.LoadBlock(0);
        using var stream = Calibration.ActivationStream.Embed(model, ids);
        stream.Advance(block0, contexts, default);
        var targets = new[] { 1, 3 }.SelectMany(b => model.LinearLayout(b).SelectMany(g => g)).Select(l => l.Name).ToHashSet();
        var options = new OacOptions { Labels = labels, Seed = 3 };
        var chunked = OutputAdaptiveHessian.Compute(model, 1, null, stream, targets, options, contexts, null);

        var reference = targets.ToDictionary(t => t, _ => zeros(1), StringComparer.Ordinal);
        var blocks = Enumerable.Range(1, model.BlockCount - 1).Select(model.LoadBlock).ToList();
        var leaves = blocks.SelectMany(b => b.Linears).Where(l => targets.Contains(l.Name))
            .ToDictionary(l => l, l => l.ExchangeWeight(l.Weight.to(ScalarType.Float32, copy: true).requires_grad_(true)));
        using var head = model.HeadWeight();
        using (var input = stream.Input(0))
            for (int s = 0; s < ids.Count; s++)
            {
                using var scope = NewDisposeScope();
                var h = input.narrow(0, s, 1);
                foreach (var b in blocks) h = b.Forward(h, contexts.For(40));
                var predicted = model.Logits(model.FinalNorm(h), head).squeeze(0).narrow(0, 0, 39);
                Tensor y;
                if (labels == FisherLabels.Empirical) y = tensor(ids[s].Skip(1).ToArray());
                else
                {
                    using var gen = new Generator((ulong)(options.Seed * 1_000_003 + s));
                    using var noGrad = no_grad();
                    y = predicted.softmax(-1).multinomial(1, true, gen).squeeze(1);
                }
                nn.functional.cross_entropy(predicted, y).backward();
                foreach (var l in leaves.Keys)
                {
                    var g = l.Weight.grad!;
                    var term = g.t().matmul(g).DetachFromDisposeScope();
                    var old = reference[l.Name];
                    reference[l.Name] = old.Plus(term).DetachFromDisposeScope();
                    old.Dispose();
                    g.zero_();
                }
            }
        foreach (var (l, original) in leaves) l.ExchangeWeight(original).Dispose();
        foreach (var b in blocks) b.Dispose();

        Assert.Equal(targets.Order(), chunked.Keys.Order());
        var outFeatures = model.LinearLayout(1).SelectMany(g => g).ToDictionary(l => l.Name.Split('.')[^1], l => l.OutFeatures);
        foreach (var name in targets)
        {
            using var expected = reference[name].div(Scalars.Of(ids.Count * (double)outFeatures[name.Split('.')[^1]]));
            double rel = (chunked[name] - expected).abs().max().item<float>() / expected.abs().max().item<float>();
            Assert.True(rel < 1e-4, $"{name}: relative difference {rel}");
        }
        foreach (var t in chunked.Values.Concat(reference.Values)) t.Dispose();
    }
}
