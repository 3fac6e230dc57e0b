using TorchSharp;
using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Engine.Hessians;

/// <summary>Per-input statistics of a linear group (spec §2.1): H = (2/N)·X_q X_qᵀ and, when the
/// float stream is used, D = (2/N)·(X_f − X_q) X_qᵀ, with N counting sequences as the reference
/// does. Each batch's product is formed in fp32 (one GEMM) and added into an fp64 sum, scaled and
/// rounded to fp32 once at the end. The fp64 sum makes the result independent of how the batches are
/// grouped: a distributed run's shards (<see cref="TakeSums"/>) add up to the single process's H bit for
/// bit, except where an fp64 rounding lands on an fp32 rounding boundary (about 1e-9 per element), where
/// fp32 sums of different groupings differ in most elements' last bits.</summary>
public sealed class LayerStatistics : IDisposable
{
    /// <summary>Rows of the fp64 sum updated at a time (the fp32 product's rows are widened in place of a
    /// whole fp64 copy of it).</summary>
    const long RowBytes = 16L << 20;

    Tensor? _h;
    Tensor? _d;
    int _sequences;

    public LayerStatistics(long inFeatures, bool withAsymmetry)
    {
        _h = zeros([inFeatures, inFeatures], ScalarType.Float64).DetachFromDisposeScope();
        _d = withAsymmetry ? zeros([inFeatures, inFeatures], ScalarType.Float64).DetachFromDisposeScope() : null;
    }

    /// <summary>Adds one batch's inputs: x_q [.., n] and, with asymmetry, x_f of the same shape.</summary>
    public void Add(Tensor xq, Tensor? xf = null)
    {
        using var scope = NewDisposeScope();
        if (_h is null) throw new InvalidOperationException("the statistics were already handed over");
        using var phase = Calibration.PhaseClock.Measure("xtx");
        var q = xq.reshape(-1, xq.shape[^1]).to(ScalarType.Float32);
        using (var product = q.t().matmul(q))
            Accumulate(_h, product);
        if (_d is not null)
        {
            if (xf is null) throw new ArgumentException("the float-stream input is required for D");
            var f = xf.reshape(-1, xf.shape[^1]).to(ScalarType.Float32);
            using var diff = f - q;
            using var product = diff.t().matmul(q);
            Accumulate(_d, product);
        }
        _sequences += (int)(xq.dim() == 3 ? xq.shape[0] : 1);
    }

    /// <summary>sum += product (fp32 into fp64, exact widening), a block of rows at a time.</summary>
    internal static void Accumulate(Tensor sum, Tensor product)
    {
        long n = sum.shape[0], rows = Math.Max(1, RowBytes / (sum.shape[1] * 8));
        for (long r = 0; r < n; r += rows)
        {
            long count = Math.Min(rows, n - r);
            using var target = sum.narrow(0, r, count);
            using var part = product.narrow(0, r, count);
            target.add_(part, Scalars.One);
        }
    }

    public int Sequences => _sequences;

    /// <summary>The final (2/N)-scaled H and D. The accumulators are scaled in place and handed over
    /// (the caller owns them): an 11008² H is not copied.</summary>
    public (Tensor H, Tensor? D) Finish()
    {
        if (_h is null) throw new InvalidOperationException("the statistics were already handed over");
        var (h, d) = (_h, _d);
        _h = _d = null;
        return Scale(h, d, _sequences);
    }

    /// <summary>The unscaled fp64 sums ("H", and "D" with asymmetry) and the sequence count, handed over (a
    /// worker's share of a distributed run: the coordinator adds every worker's sums and scales once, as
    /// <see cref="Finish"/> does, with <see cref="Shared"/>).</summary>
    public StatisticSums TakeSums()
    {
        if (_h is null) throw new InvalidOperationException("the statistics were already handed over");
        var sums = _d is null ? new[] { ("H", _h) } : [("H", _h), ("D", _d)];
        _h = _d = null;
        return new StatisticSums(sums, _sequences);
    }

    /// <summary>A group's statistics from summed shards: H (and D) scaled once and shared by the
    /// <paramref name="active"/> linears. The sums are consumed.</summary>
    public static GroupStatistics Shared(StatisticSums sums, IReadOnlyList<NamedLinear> active)
    {
        var h = sums.Take("H") ?? throw new InvalidOperationException("the sums hold no H");
        var (h32, d32) = Scale(h, sums.Take("D"), sums.Sequences);
        return GroupStatistics.Shared(active, h32, d32);
    }

    /// <summary>fp64 sums over <paramref name="sequences"/> sequences scaled by 2/N and rounded to fp32
    /// once; the sums are consumed (disposed).</summary>
    public static (Tensor H, Tensor? D) Scale(Tensor h, Tensor? d, int sequences)
    {
        double scale = 2.0 / Math.Max(1, sequences);
        Tensor Finish(Tensor sum)
        {
            using (sum)
            {
                Scalars.Use(scale, s => sum.mul_(s));
                return sum.to(ScalarType.Float32).DetachFromDisposeScope();
            }
        }
        var h32 = Finish(h);
        return (h32, d is null ? null : Finish(d));
    }

    public void Dispose()
    {
        _h?.Dispose();
        _d?.Dispose();
    }
}
