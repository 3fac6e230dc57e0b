using DotQuant.Engine.IO;
using DotQuant.Engine.Quantizers;
using DotQuant.Tests;
using Xunit;
using static TorchSharp.torch;

namespace DotQuant.Engine.Tests;

/// <summary>Spec §9.4 for BiLLM.</summary>
public class BillmTests
{
    static (Tensor W, Tensor H) Layer(int m, int n, int seed, bool uniformInputs = false)
    {
        var g = new Generator((ulong)seed);
        var x = randn(2048, n, generator: g) * (uniformInputs ? ones(n) : rand(n, generator: g).mul(Scalars.Of(3L)).add(Scalars.Of(0.1), Scalars.One));
        var w = randn(m, n, generator: g);
        w.narrow(1, 7, 2).mul_(Scalars.Of(6L));                    // two salient-looking columns
        return (w, x.t().matmul(x).mul(Scalars.Of(2.0 / 2048)));
    }

    [Fact]
    public void Binarizer_orders()
    {
        var g = new Generator(1);
        var a = randn(6, 40, dtype: ScalarType.Float64, generator: g);
        var mask = rand(6, 40, dtype: ScalarType.Float64, generator: g).gt(Scalars.Of(0.3));
        mask[4].fill_(Scalars.Of(false));                                          // empty row → 0
        var one = BillmSolver.Binarize(a, mask, 1);
        var two = BillmSolver.Binarize(a, mask, 2);
        var row = a[0].masked_select(mask[0]);
        double mu = row.mean().item<double>();
        Assert.Equal(mu, one.Mu[0][0].item<double>(), 12);
        Assert.Equal(row.sub(Scalars.Of(mu)).abs().mean().item<double>(), one.Alpha[0][0].item<double>(), 12);
        var e1 = ((a - one.Value) * mask).Squared().sum([1]);
        var e2 = ((a - two.Value) * mask).Squared().sum([1]);
        Assert.True(e2.le(e1.add(Scalars.Of(1e-12), Scalars.One)).all().item<bool>());
        Assert.True(one.Value[4].eq(Scalars.Of(0L)).all().item<bool>() && one.Value.masked_select(mask.logical_not()).eq(Scalars.Of(0L)).all().item<bool>());
        // An entry equal to μ maps to μ + α (sign(0) = +1: one stored bit per weight).
        var flat = tensor(new double[] { 1, 2, 3 }).unsqueeze(0);
        var b = BillmSolver.Binarize(flat, ones(1, 3, dtype: ScalarType.Bool), 1);
        Assert.Equal(2 + 2.0 / 3, b.Value[0, 1].item<double>(), 12);
    }

    [Fact]
    public void Masks_partition_each_block_with_whole_salient_columns()
    {
        var (w, h) = Layer(32, 256, 2, uniformInputs: true);
        using var q = BillmSolver.Solve(w, h, new BillmOptions());
        Assert.False(q.Sparse.logical_and(q.Salient.unsqueeze(0)).any().item<bool>(), "a salient weight is also in a split group");
        for (int b = 0; b < 2; b++)
        {
            long k = q.Salient.narrow(0, b * 128, 128).sum().item<long>();
            Assert.InRange(k, 1, 49);
        }
        Assert.True(q.Salient[7].item<bool>() && q.Salient[8].item<bool>(), "the scaled-up columns are salient");
    }

    [Fact]
    public void Bit_accounting_paper_and_stored()
    {
        var (w, h) = Layer(32, 256, 3);
        using var q = BillmSolver.Solve(w, h, new BillmOptions());
        long m = 32, n = 256, k = q.SalientColumns;
        Assert.Equal(1 + (double)k / n, q.PaperBits, 12);
        Assert.Equal(1 + 1.0 / 128, q.FlagBits, 12);
        // signs + split 1 bit each; residual signs for salient columns (padded to 32 per row);
        // column flags in one 32-bit stream; 8 fp16 per row and block.
        double stored = m * n + m * n + m * 32 * ((k + 31) / 32) + 32 * ((n + 31) / 32) + 2 * m * 8 * 16;
        Assert.Equal(stored / (m * n), q.StoredBits, 12);
    }

    [Fact]
    public void No_intra_block_compensation_so_block_size_matters_and_it_beats_plain_binarization()
    {
        var (w, h) = Layer(32, 256, 4);
        using var a = BillmSolver.Solve(w, h, new BillmOptions());
        using var b = BillmSolver.Solve(w, h, new BillmOptions { BlockSize = 64 });
        Assert.False(a.Dequantize().allclose(b.Dequantize()));
        // Block compensation against H beats the same binarization with no Hessian (identity H) on
        // tr(ΔW H ΔWᵀ). (Searching on S = W²/d², the code's default, is worse than both on this synthetic
        // layer — see docs/calibration.md; it is kept as the default because it is the published path.)
        using var plain = BillmSolver.Solve(w, eye(256), new BillmOptions { Metric = SalienceMetric.Magnitude });
        using var compensated = BillmSolver.Solve(w, h, new BillmOptions { Metric = SalienceMetric.Magnitude });
        double Err(SolvedLinear q) { var d = w - q.Dequantize(); return d.matmul(h).mul(d).sum().item<float>(); }
        Assert.True(Err(compensated) < Err(plain), $"{Err(compensated)} vs {Err(plain)}");
    }

    [Fact]
    public void Packed_layer_reads_back_bit_exact()
    {
        var (w, h) = Layer(24, 200, 5);                 // a short last block (72 columns)
        using var q = BillmSolver.Solve(w, h, new BillmOptions());
        using var dir = new TempDir();
        var tensors = new Dictionary<string, Tensor>();
        q.Pack(tensors, "layer");
        SafeTensorsWriter.Write(dir.File("model.safetensors"), tensors, new Dictionary<string, string>());
        using var ckpt = Checkpoint.Open(dir.Path);
        using var back = BinaryLinear.Read(ckpt, "layer", 24, 200, q.Describe());
        Assert.True(q.Dequantize().eq(back.Dequantize()).all().item<bool>());
        // and the solver's own weights are exactly what the packed form rebuilds
        Assert.Equal(q.SalientColumns, back.SalientColumns);
    }
}
