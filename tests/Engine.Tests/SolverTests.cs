using System.Text.Json;
using DotQuant.Engine.Quantizers;
using DotQuant.Tests;
using static TorchSharp.torch;

namespace DotQuant.Engine.Tests;

/// <summary>The column solver against the spec's §9 checks and against the independent numpy
/// golden model (../shared/spec/checks/ref.py), whose outputs are in Golden/ref_vectors.json.</summary>
public class SolverTests
{
    static readonly JsonElement Golden = JsonDocument.Parse(File.ReadAllText(
        Path.Combine(AppContext.BaseDirectory, "Golden", "ref_vectors.json"))).RootElement;

    static Tensor Matrix(string key, long rows, long cols) =>
        tensor(Golden.GetProperty(key).EnumerateArray().Select(e => e.GetDouble()).ToArray(), [rows, cols], ScalarType.Float64);

    static (Tensor W, Tensor H, Tensor D) Layer()
    {
        long m = Golden.GetProperty("m").GetInt64(), n = Golden.GetProperty("n").GetInt64();
        return (Matrix("W", m, n), Matrix("H", n, n), Matrix("D", n, n));
    }

    static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    static double Get(JsonElement c, string key, double fallback) => c.TryGetProperty(key, out var v) ? v.GetDouble() : fallback;

    static SolverOptions OptionsOf(JsonElement c) => new()
    {
        Bits = c.GetProperty("bits").GetInt32(),
        Symmetric = c.GetProperty("sym").GetBoolean(),
        Convention = c.TryGetProperty("style", out var s) && s.GetString() == "quarot" ? GridConvention.QuaRot : GridConvention.Gptq,
        GroupSize = (int)Get(c, "gs", -1),
        ActOrder = c.TryGetProperty("actorder", out var a) && a.GetBoolean(),
        BlockSize = (int)Get(c, "B", 128),
        Damp = Get(c, "percdamp", 0.01),
        Alpha = Get(c, "alpha", 0),
        Alpha2 = Get(c, "alpha2", 0),
        ResCompMode = ResCompMode.Org,      // ref.py implements the in-place ('org') semantics
        Fp16Scales = false,
        DType = ScalarType.Float64,
    };

    public static IEnumerable<object[]> Cases() =>
        Golden.GetProperty("cases").EnumerateArray().Select(c => new object[] { c.GetProperty("name").GetString()! });

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesNumpyGoldenModel(string name)
    {
        var c = Golden.GetProperty("cases").EnumerateArray().Single(x => x.GetProperty("name").GetString() == name);
        var (w, h, d) = Layer();
        var o = OptionsOf(c);
        using var q = c.TryGetProperty("rtn", out _)
            ? Grid.Rtn(w, o)
            : Grid.Gptq(w, h, c.GetProperty("useD").GetBoolean() ? d : null, o);
        var expected = tensor(c.GetProperty("Q").EnumerateArray().Select(e => e.GetDouble()).ToArray(), w.shape, ScalarType.Float64);
        using var actual = q.Dequantize(ScalarType.Float64);
        double err = (actual - expected).abs().max().item<double>();
        Assert.True(err < 1e-9, $"{name}: max |ΔQ| = {err}");
        if (c.GetProperty("loss").ValueKind == JsonValueKind.Number)
        {
            double loss = c.GetProperty("loss").GetDouble();
            Assert.True(Math.Abs(q.Loss - loss) <= 1e-9 * Math.Max(1, loss), $"{name}: loss {q.Loss} vs {loss}");
        }
    }

    [Fact]
    public void HugeDampingEqualsRtn()
    {
        var (w, h, _) = Layer();
        h.diagonal().masked_fill_(h.diagonal().eq(Scalars.Of(0L)), Scalars.Of(1L));   // no dead channel: RTN keeps such columns
        foreach (bool sym in new[] { false, true })
        {
            var o = new SolverOptions { Bits = 4, Symmetric = sym, Damp = 1e8, DType = ScalarType.Float64, Fp16Scales = false };
            using var gptq = Grid.Gptq(w, h, null, o);
            using var rtn = Grid.Rtn(w, o);
            // asym: exact; GPTQ-style sym: equal except a ±1 code at the −absmax rounding tie (spec §2.5a).
            var diff = (gptq.Codes.to(ScalarType.Int32) - rtn.Codes.to(ScalarType.Int32)).abs();
            Assert.True(diff.max().item<int>() <= (sym ? 1 : 0));
            Assert.True(diff.gt(Scalars.Of(0L)).sum().item<long>() <= (sym ? w.shape[0] : 0));
        }
    }

    [Fact]
    public void LossIdentityHoldsForEveryConfiguration()
    {
        var (w, h, _) = Layer();
        foreach (var (g, act) in new[] { (-1, false), (8, true), (16, false) })
        {
            var o = new SolverOptions { Bits = 3, GroupSize = g, ActOrder = act, DType = ScalarType.Float64, Fp16Scales = false };
            using var q = Grid.Gptq(w, h, null, o);
            // tr((W0 − Q) H_λ (W0 − Q)ᵀ) with the dead channel's diagonal set to 1 and its column zeroed.
            var hd = h.clone();
            var dead = hd.diagonal().eq(Scalars.Of(0L));
            hd.diagonal().masked_fill_(dead, Scalars.Of(1L));
            var w0 = w.masked_fill(dead.unsqueeze(0), Scalars.Of(0L));
            var hl = hd.Plus(eye(hd.shape[0], dtype: ScalarType.Float64).mul(Scalars.Of(o.Damp * hd.diagonal().mean().item<double>())));
            var dw = w0 - q.Dequantize(ScalarType.Float64);
            double trace = dw.matmul(hl).matmul(dw.t()).trace().item<double>();
            Assert.True(Math.Abs(q.Loss - trace) <= 1e-9 * trace, $"g={g}: {q.Loss} vs {trace}");
        }
    }

    [Fact]
    public void GptqIsIndependentOfBlockSize()
    {
        var (w, h, _) = Layer();
        Tensor Run(int b, int g) => Grid.Gptq(w, h, null, new SolverOptions { Bits = 3, BlockSize = b, GroupSize = g, DType = ScalarType.Float64, Fp16Scales = false }).Dequantize(ScalarType.Float64);
        var reference = Run(128, -1);
        // Exact in exact arithmetic (the lazy GEMM re-orders the same rank-1 updates); in fp64 only
        // summation order differs, far below one quantization step.
        foreach (int b in new[] { 1, 7, 32, 40 })
            Assert.True((Run(b, -1) - reference).abs().max().item<double>() < 1e-12, $"B={b}");
        // g a multiple of B: still independent.
        Assert.True((Run(8, 16) - Run(16, 16)).abs().max().item<double>() < 1e-12);
    }

    [Fact]
    public void GptaqWithoutAsymmetryIsGptqAndResCompWithoutAlpha2IsGptaq()
    {
        var (w, h, d) = Layer();
        var o = new SolverOptions { Bits = 3, GroupSize = 8, ActOrder = true, DType = ScalarType.Float64, Fp16Scales = false };
        using var gptq = Grid.Gptq(w, h, null, o);
        using var zeroD = Grid.Gptq(w, h, zeros_like(d), o with { Alpha = 0.25 });
        using var zeroAlpha = Grid.Gptq(w, h, d, o with { Alpha = 0 });
        Assert.True(Same(gptq.Codes, zeroD.Codes));
        Assert.True(Same(gptq.Codes, zeroAlpha.Codes));

        using var gptaq = Grid.Gptq(w, h, d, o with { Alpha = 0.25 });
        using var rescompOff = Grid.Gptq(w, h, d, o with { Alpha = 0.25, Alpha2 = 0 });
        Assert.True(Same(gptaq.Codes, rescompOff.Codes));
        Assert.False(Same(gptaq.Codes, gptq.Codes));
    }

    [Fact]
    public void PAndRClosedForms()
    {
        var (_, h, d) = Layer();
        long n = h.shape[0];
        var hd = h.clone();
        hd.diagonal().masked_fill_(hd.diagonal().eq(Scalars.Of(0L)), Scalars.Of(1L));
        var u = InverseCholesky.Factor(hd, 0.01, "test").U;
        // U is the upper factor of (H + λI)⁻¹.
        var hl = hd.Plus(eye(n, dtype: ScalarType.Float64).mul(Scalars.Of(0.01 * hd.diagonal().mean().item<double>())));
        Assert.True((u.t().matmul(u) - hl.inverse()).abs().max().item<double>() < 1e-10);
        // V-2: triu1(D Uᵀ)U equals the row-wise D[j,:] U[j+1:,:]ᵀ U[j+1:,:].
        var p = ColumnSolver.MultiplyTriu1(d, u, 1.0);
        for (long j = 0; j < n - 1; j++)
        {
            var uj = u.narrow(0, j + 1, n - j - 1);
            var row = d[j].unsqueeze(0).matmul(uj.t()).matmul(uj)[0];
            Assert.True((p[j] - row).abs().max().item<double>() < 1e-10, $"row {j}");
        }
        // V-9: with D = 0, R = α₂·triu1(I − diag(U)⁻¹U) for any damping.
        var r = ColumnSolver.MultiplyTriu1(hd, u, 0.25);
        var closed = (eye(n, dtype: ScalarType.Float64) - u / u.diagonal().unsqueeze(1)).triu(1).mul(Scalars.Of(0.25));
        Assert.True((r - closed).abs().max().item<double>() < 1e-9);
    }

    static (Tensor W, Tensor Xf, Tensor Xq) Synthetic(long seed, long m = 32, long n = 96, long k = 2048)
    {
        var g = new TorchSharp.torch.Generator((ulong)seed);
        var a = randn(n, n, dtype: ScalarType.Float64, generator: g).mul(Scalars.Of(0.1)).Plus(randn(n, 1, dtype: ScalarType.Float64, generator: g).mul(Scalars.Of(0.9)));
        var xf = a.matmul(randn(n, k, dtype: ScalarType.Float64, generator: g)).Plus(randn(n, 1, dtype: ScalarType.Float64, generator: g).mul(Scalars.Of(0.5)));
        var xq = xf.Plus(randn(n, n, dtype: ScalarType.Float64, generator: g).mul(Scalars.Of(0.3 / Math.Sqrt(n))).matmul(xf)).Plus(randn(n, k, dtype: ScalarType.Float64, generator: g).mul(Scalars.Of(0.05)));
        var w = randn(m, n, dtype: ScalarType.Float64, generator: g).div(Scalars.Of(Math.Sqrt(n)));
        return (w, xf, xq);
    }

    [Fact]
    public void GptqBeatsRtnAndGptaqReducesTheAsymmetricObjective()
    {
        for (long seed = 1; seed <= 3; seed++)
        {
            var (w, xf, xq) = Synthetic(seed);
            long k = xq.shape[1];
            var h = xq.matmul(xq.t()).mul(Scalars.Of(2.0 / k));
            var d = (xf - xq).matmul(xq.t()).mul(Scalars.Of(2.0 / k));
            var o = new SolverOptions { Bits = 3, GroupSize = 32, ActOrder = true, DType = ScalarType.Float64, Fp16Scales = false };
            var rtnQ = Grid.Rtn(w, o).Dequantize(ScalarType.Float64);
            var gptqQ = Grid.Gptq(w, h, null, o).Dequantize(ScalarType.Float64);
            var gptaqQ = Grid.Gptq(w, h, d, o with { Alpha = 0.25 }).Dequantize(ScalarType.Float64);
            double Sym(Tensor q) => (w - q).matmul(h).matmul((w - q).t()).trace().item<double>();
            double Asym(Tensor q) => (w.matmul(xf) - q.matmul(xq)).Squared().sum().item<double>();
            Assert.True(Sym(gptqQ) < Sym(rtnQ), $"seed {seed}: GPTQ {Sym(gptqQ)} vs RTN {Sym(rtnQ)}");
            Assert.True(Asym(gptaqQ) < Asym(gptqQ), $"seed {seed}: GPTAQ {Asym(gptaqQ)} vs GPTQ {Asym(gptqQ)}");
        }
    }

    [Fact]
    public void Fp16ScalesMakeDequantizationExactInFp32()
    {
        var (w, h, _) = Layer();
        var o = new SolverOptions { Bits = 4, GroupSize = 8 };
        using var q = Grid.Gptq(w.to(ScalarType.Float32), h.to(ScalarType.Float32), null, o);
        Assert.True(Same(q.Scales.to(ScalarType.Float16).to(ScalarType.Float32), q.Scales));
        Assert.Equal(5, q.Scales.shape[0]);                     // 40 / 8 groups
        Assert.Equal(new long[] { 16, 40 }, q.Codes.shape);
        Assert.True(q.Codes.max().item<byte>() <= 15);
    }

    [Fact]
    public void MseClipShrinksTheGridWhenItLowersTheError()
    {
        // Heavy-tailed rows: one outlier per row stretches the min–max grid; the clip search
        // shrinks the range where resolution on the bulk outweighs the clipped outlier (|·|^2.4
        // error), never does worse than min–max, and keeps min–max where it is best.
        var g = new TorchSharp.torch.Generator(5);
        var w = randn(8, 64, dtype: ScalarType.Float64, generator: g).mul(Scalars.Of(0.02));
        w[TensorIndex.Colon, 0] = full([8], Scalars.Of(0.5), dtype: ScalarType.Float64);
        var plain = new GridOptions(3, false, Fp16Scales: false).Find(w);
        var clipped = new GridOptions(3, false, MseClip: true, Fp16Scales: false).Find(w);
        double Err(QuantGrid q) => (q.QuantizeDequantize(w) - w).abs().pow(Scalars.Of(2.4)).sum().item<double>();
        Assert.True(Err(clipped) < Err(plain), $"{Err(clipped)} vs {Err(plain)}");
        Assert.True((clipped.Scale <= plain.Scale).all().item<bool>());   // only ever shrinks
        Assert.True((clipped.Scale < plain.Scale).any().item<bool>());
    }

    [Fact]
    public void GroupIndexFollowsTheSpecRules()
    {
        var (w, h, _) = Layer();
        var o = new SolverOptions { Bits = 4, GroupSize = 8, DType = ScalarType.Float64, Fp16Scales = false };
        var expectedPlain = Enumerable.Range(0, 40).Select(k => k / 8).ToArray();
        using var plain = Grid.Gptq(w, h, null, o);
        Assert.Equal(expectedPlain, plain.GIdx.data<int>().ToArray());
        // act order + static groups: groups stay contiguous in the original order.
        using var stat = Grid.Gptq(w, h, null, o with { ActOrder = true, StaticGroups = true });
        Assert.Equal(expectedPlain, stat.GIdx.data<int>().ToArray());
        // act order + dynamic groups: channel k belongs to the group in which it was processed.
        using var dyn = Grid.Gptq(w, h, null, o with { ActOrder = true });
        var order = h.diagonal().sort(0, descending: true, stable: true).Indices.data<long>().ToArray();
        var gidx = dyn.GIdx.data<int>().ToArray();
        for (int position = 0; position < 40; position++)
            Assert.Equal(position / 8, gidx[order[position]]);
        Assert.NotEqual(expectedPlain, gidx);
        Assert.Equal(5, dyn.Scales.shape[0]);
        // Dequantization through g_idx reproduces the solver's result in every case.
        Assert.True(dyn.Dequantize(ScalarType.Float64).isfinite().all().item<bool>());
    }

    [Fact]
    public void SingularHessianRetriesWithMoreDampingThenFailsClearly()
    {
        // Rank-1 H: positive semi-definite; with damp 0 the factorization fails and is retried.
        var x = tensor(new double[] { 1, 2, 3, 4 }, [4, 1], ScalarType.Float64);
        var h = x.matmul(x.t());
        var warnings = new List<string>();
        var r = InverseCholesky.Factor(h, 0.0, "layers.0.q_proj", warnings.Add);
        Assert.True(r.Damp > 0);
        Assert.Single(warnings);
        Assert.Contains("layers.0.q_proj", warnings[0]);
        var nan = h.clone();
        nan[0, 0] = double.NaN;
        var e = Assert.Throws<DotQuant.Runtime.DotQuantException>(() => InverseCholesky.Factor(nan, 0.01, "layers.1.o_proj"));
        Assert.Contains("layers.1.o_proj", e.Message);
    }
}

/// <summary>The solvers on the min–max grids, typed as the layout these tests inspect.</summary>
static class Grid
{
    public static QuantizedLinear Gptq(Tensor w, Tensor h, Tensor? d, SolverOptions o) => (QuantizedLinear)ColumnSolver.Solve(w, h, d, o);
    public static QuantizedLinear Rtn(Tensor w, SolverOptions o) => (QuantizedLinear)RtnSolver.Solve(w, o);
}
