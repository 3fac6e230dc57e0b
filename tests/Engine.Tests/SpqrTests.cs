using DotQuant.Engine.Formats;
using DotQuant.Engine.IO;
using DotQuant.Engine.Quantizers;
using DotQuant.Tests;
using Xunit;
using static TorchSharp.torch;

namespace DotQuant.Engine.Tests;

/// <summary>Spec §9.1 and §9.3 for SpQR.</summary>
public class SpqrTests
{
    static (Tensor W, Tensor H) Layer(int m, int n, int seed, int tokens = 1024)
    {
        var g = new Generator((ulong)seed);
        var x = randn(tokens, n, dtype: ScalarType.Float64, generator: g) * rand(n, dtype: ScalarType.Float64, generator: g).mul(Scalars.Of(3L)).add(Scalars.Of(0.1), Scalars.One);
        var w = randn(m, n, dtype: ScalarType.Float64, generator: g);
        w[3, 5] = w[3, 5].mul(Scalars.Of(40L));                       // a real outlier
        return (w, x.t().matmul(x).mul(Scalars.Of(2.0 / tokens)));
    }

    static SpqrOptions Options(double tau = 0.3) => new() { Bits = 2, OutlierThreshold = tau, DType = ScalarType.Float64 };

    [Theory]
    [InlineData(3, 3, 3, 16, 16, 0.0, 3.625)]
    [InlineData(2, 3, 3, 16, 16, 0.0, 2.625)]
    [InlineData(2, 3, 3, 16, 16, 0.01, 2.945)]
    [InlineData(4, 3, 3, 16, 16, 0.0, 4.625)]
    [InlineData(3, 3, 3, 16, 32, 0.004, 3.628)]
    public void Average_bits_formula(int b, int bs, int bz, int beta1, int beta2, double outliers, double expected) =>
        Assert.Equal(expected, SpqrOptions.AverageBits(b, bs, bz, beta1, beta2, outliers), 3);

    [Fact]
    public void Stored_bits_count_every_tensor_and_the_paper_bits_the_outliers()
    {
        var (w, h) = Layer(32, 64, 1);
        using var q = SpqrSolver.Solve(w, h, Options());
        long m = 32, n = 64, k = q.OutlierCount;
        Assert.True(k > 0);
        // codes 2·m·n; perm 32·n; scale and zero codes 3 bits in one stream per column group (4 groups,
        // 32 rows → 3 words each); fp16 (scale, zero) per 16 rows for both; CSR offsets 32·(m+1); 32 per outlier.
        double stored = 2 * m * n + 32 * n + 2 * 4 * 3 * 32 + 2 * 4 * 2 * 2 * 16 + 32 * (m + 1) + 32 * k;
        Assert.Equal(stored / (m * n), q.StoredBits, 9);
        Assert.Equal(2 + 6.0 / 16 + 64.0 / 256 + 32.0 * k / (m * n), q.PaperBits, 9);
    }

    [Fact]
    public void Error_identity_holds_with_outliers()
    {
        var (w, h) = Layer(24, 96, 2);
        using var q = SpqrSolver.Solve(w, h, Options() with { Damp = 0.01 });
        Assert.True(q.OutlierCount > 0);
        // ‖E‖² = tr(ΔW H_λ ΔWᵀ) with H_λ the matrix actually factorized (permutation-invariant form).
        var hd = h.Plus(eye(96, dtype: ScalarType.Float64).mul(Scalars.Of(q.DampUsed * h.diagonal().mean().item<double>())));
        var dw = w - q.Dequantize(ScalarType.Float64);
        double tr = dw.matmul(hd).mul(dw).sum().item<double>();
        Assert.True(Math.Abs(tr - q.Loss) / q.Loss < 1e-6, $"{tr} vs {q.Loss}");
    }

    [Fact]
    public void Block_size_and_Hessian_scale_do_not_change_the_result()
    {
        var (w, h) = Layer(32, 128, 3);
        using var a = SpqrSolver.Solve(w, h, Options());
        using var b = SpqrSolver.Solve(w, h, Options() with { BlockSize = 32 });
        using var c = SpqrSolver.Solve(w, h.mul(Scalars.Of(37L)), Options());
        Assert.True(a.Dequantize(ScalarType.Float64).allclose(b.Dequantize(ScalarType.Float64), 0, 1e-9));
        Assert.True(a.Dequantize(ScalarType.Float64).allclose(c.Dequantize(ScalarType.Float64), 0, 1e-9));
        Assert.Equal(a.OutlierCount, c.OutlierCount);
    }

    [Fact]
    public void Leave_one_out_finds_the_large_weight_and_the_threshold_controls_outliers()
    {
        var g = new Generator(5);
        var group = randn(8, 16, dtype: ScalarType.Float64, generator: g);
        group[2, 7] = group[2, 7].abs().mul(Scalars.Of(50L)).add(Scalars.Of(10L), Scalars.One);
        var red = SpqrSolver.LeaveOneOutReduction(group, ones(16, dtype: ScalarType.Float64), 3);
        var row = red[2];
        double top = row[7].item<double>();
        // The largest in its row and far above the typical entry (dropping the row minimum also moves the
        // grid, so "orders of magnitude above every entry" does not hold at 2–3 bits).
        Assert.Equal(7, row.argmax().item<long>());
        Assert.True(top > 10 * row.median().item<double>(), string.Join(",", row.data<double>().ToArray().Select(x => x.ToString("G3"))));

        var (w, h) = Layer(32, 64, 6);
        using (var none = SpqrSolver.Solve(w, h, Options(double.PositiveInfinity))) Assert.Equal(0, none.OutlierCount);
        long previous = long.MaxValue;
        foreach (var tau in new[] { 0.05, 0.1, 0.2, 0.5, 1.0, 2.0 })
        {
            using var q = SpqrSolver.Solve(w, h, Options(tau));
            Assert.True(q.OutlierCount <= previous, $"τ {tau}: {q.OutlierCount} > {previous}");
            previous = q.OutlierCount;
        }
        // τ → 0: every imperfect weight is an outlier, so Ŵ = W up to the fp16 storage of outliers.
        using var all = SpqrSolver.Solve(w, h, Options(1e-12));
        var back = all.Dequantize(ScalarType.Float64);
        Assert.True((back - w).abs().max().item<double>() <= w.abs().max().item<double>() * 1e-3);
    }

    [Theory]
    [InlineData(3)]
    [InlineData(8)]
    public void Bilevel_statistics_stay_within_half_a_grid_step(int bits)
    {
        var g = new Generator(7);
        var v = rand(40, dtype: ScalarType.Float32, generator: g).mul(Scalars.Of(0.2)).add(Scalars.Of(0.01), Scalars.One);     // 40 scales: groups of 16, 16, 8
        var codes = zeros(40, dtype: ScalarType.Byte);
        var stats = zeros(3, 2);
        var used = SpqrSolver.Bilevel(v, bits, 16, codes, stats);
        for (int grp = 0; grp < 3; grp++)
        {
            var part = v.narrow(0, grp * 16, Math.Min(16, 40 - grp * 16));
            var back = used.narrow(0, grp * 16, part.shape[0]);
            double range = (part.max() - part.min()).item<float>();
            double bound = range / (2 * ((1 << bits) - 1)) * 1.01 + 1e-3 * range;   // half a step (+ fp16 storage of the grid)
            Assert.True((back - part).abs().max().item<float>() <= bound, $"group {grp}: {(back - part).abs().max().item<float>()} > {bound}");
        }
        Assert.True(codes.max().item<byte>() <= (1 << bits) - 1);
    }

    [Fact]
    public void Packed_layer_reads_back_bit_exact_with_CSR_outliers()
    {
        var (w, h) = Layer(40, 72, 8);   // m not a multiple of β2: the last row group is short
        using var q = SpqrSolver.Solve(w.to(ScalarType.Float32), h.to(ScalarType.Float32), Options() with { DType = ScalarType.Float32 });
        Assert.True(q.OutlierCount > 0);
        using var dir = new TempDir();
        var tensors = new Dictionary<string, Tensor>();
        q.Pack(tensors, "layer");
        SafeTensorsWriter.Write(dir.File("model.safetensors"), tensors, new Dictionary<string, string>());
        using var ckpt = Checkpoint.Open(dir.Path);
        using var back = SpqrLinear.Read(ckpt, "layer", 40, 72, 2, q.Describe());
        Assert.True(q.Dequantize().eq(back.Dequantize()).all().item<bool>());
        Assert.Equal(q.OutlierCount, back.OutlierCount);
        // Outlier positions hold the (fp16) outlier, not the dense code's value.
        var offsets = back.RowOffsets.data<int>().ToArray();
        int row = Enumerable.Range(0, 40).First(r => offsets[r + 1] > offsets[r]);
        int col = back.Perm.data<int>()[back.OutlierColumns.data<int>()[offsets[row]]];
        Assert.Equal(back.OutlierValues[offsets[row]].to(ScalarType.Float32).item<float>(), back.Dequantize()[row, col].item<float>());
    }
}
