using DotQuant.Runtime;
using static TorchSharp.torch;

namespace DotQuant.Engine.Quantizers;

/// <summary>SpQR (spec §3.3): GPTQ with in-place updates (so each β1-column group's statistics see
/// every earlier update), bilevel statistics, and two-stage outliers — a leave-one-out test keeps
/// outlier candidates out of the group's min–max fit, and after compensation a weight whose
/// normalised error (w − ŵ)²/d_j² exceeds τ stays in 16 bits.</summary>
public static class SpqrSolver
{
    public static SpqrLinear Solve(Tensor w0, Tensor h, SpqrOptions o, string layer = "layer", Action<string>? warn = null, CancellationToken ct = default)
    {
        using var scope = NewDisposeScope();
        long m = w0.shape[0], n = w0.shape[1];
        int beta1 = o.GroupSize, B = Math.Max(1, o.BlockSize);
        if (n > 65535) throw new DotQuantException(ErrorCodes.ManifestCombination, $"{layer}: SpQR stores outlier columns in 16 bits; {n} inputs is too many");
        using var prep = PreparedHessian.Create(w0, h, o.Damp, o.ActOrder, o.DType, layer, warn);
        var W = prep.W;
        var U = prep.U;
        var d = U.diagonal().clone();
        double maxq = (1 << o.Bits) - 1;

        // τ = τ_rel · mean_j(var(W[:, j]) / d_j²), the reference's relative threshold.
        double tau = o.Outliers ? o.OutlierThreshold * (W.var(0, unbiased: true) / d.Squared()).mean().to(ScalarType.Float64).item<double>() : double.PositiveInfinity;

        int groups = (int)((n + beta1 - 1) / beta1), r = (int)((m + o.StatGroupSize - 1) / o.StatGroupSize);
        var codes = zeros(m, n, dtype: ScalarType.Byte);
        var scaleCodes = zeros(groups, m, dtype: ScalarType.Byte);
        var zeroCodes = zeros(groups, m, dtype: ScalarType.Byte);
        var scaleStats = zeros(groups, r, 2);
        var zeroStats = zeros(groups, r, 2);
        var outlierMask = zeros(m, n, dtype: ScalarType.Bool);
        Tensor s = null!, z = null!;
        double loss = 0;

        for (long c0 = 0; c0 < n; c0 += B)
        {
            using var block = NewDisposeScope();
            long c1 = Math.Min(c0 + B, n), count = c1 - c0;
            var err = zeros(m, count, dtype: W.dtype);
            for (long j = c0; j < c1; j++)
            {
                ct.ThrowIfCancellationRequested();
                if (j % beta1 == 0)
                {
                    int gi = (int)(j / beta1);
                    var gw = W.narrow(1, j, Math.Min(beta1, n - j));
                    if (o.Outliers) gw = WithoutCandidates(gw, d.narrow(0, j, gw.shape[1]), o.Bits, tau);
                    var (s1, z1) = MinMax(gw, o.Bits);
                    s?.Dispose(); z?.Dispose();
                    s = Bilevel(s1, o.ScaleBits, o.StatGroupSize, scaleCodes[gi], scaleStats[gi]).DetachFromDisposeScope();
                    z = Bilevel(z1, o.ZeroBits, o.StatGroupSize, zeroCodes[gi], zeroStats[gi]).DetachFromDisposeScope();
                }
                using var col = NewDisposeScope();
                var w = W.select(1, j);
                var code = (w / s.clamp_min(Scalars.Of(1e-9))).Plus(z).round_().clamp_(Scalars.Of(0L), Scalars.Of(maxq));
                var q = s * (code - z);
                double dj = d[j].to(ScalarType.Float64).item<double>();
                if (o.Outliers)
                {
                    var isOutlier = Scalars.Use(dj, djS => Scalars.Use(tau, tauS => (w - q).div(djS).Squared().gt(tauS)));
                    // The stored value is fp16; compensate for exactly what the runtime will see.
                    q = where(isOutlier, w.to(ScalarType.Float16).to(w.dtype), q);
                    outlierMask.select(1, j).copy_(isOutlier);
                }
                var e = Scalars.Use(dj, djS => (w - q).div_(djS));
                codes.select(1, j).copy_(code);
                loss += e.Squared().sum().to(ScalarType.Float64).item<double>();
                w.copy_(q);
                err.select(1, j - c0).copy_(e);
                if (j + 1 < c1)
                    W.narrow(1, j + 1, c1 - j - 1).addr_(e, U[j].narrow(0, j + 1, c1 - j - 1), 1, -1);
            }
            if (c1 < n)
                W.narrow(1, c1, n - c1).sub_(err.matmul(U.narrow(0, c0, count).narrow(1, c1, n - c1)));
        }
        s?.Dispose(); z?.Dispose();
        if (!W.isfinite().all().item<bool>() || !double.IsFinite(loss))
            throw new DotQuantException(ErrorCodes.NonFinite, $"{layer}: the SpQR solver produced NaN or Inf (check the calibration data and damping)");

        // CSR of the outliers, row-major, columns in the permuted order.
        var flat = outlierMask.view(-1).nonzero().squeeze(1);
        var rows = flat.div(Scalars.Of(n), RoundingMode.floor);
        var offsets = cat([zeros(1, dtype: ScalarType.Int64), bincount(rows, minlength: m).cumsum(0)]).to(ScalarType.Int32);
        var values = W.view(-1).index_select(0, flat).to(ScalarType.Float16);
        var result = new SpqrLinear
        {
            Codes = scope.MoveToOuter(codes),
            ScaleCodes = scope.MoveToOuter(scaleCodes),
            ZeroCodes = scope.MoveToOuter(zeroCodes),
            ScaleStats = scope.MoveToOuter(scaleStats),
            ZeroStats = scope.MoveToOuter(zeroStats),
            Perm = scope.MoveToOuter((prep.Perm ?? Scalars.Range(n, ScalarType.Int64)).to(ScalarType.Int32)),
            RowOffsets = scope.MoveToOuter(offsets),
            OutlierColumns = scope.MoveToOuter(flat.remainder(Scalars.Of(n)).to(ScalarType.Int32)),
            OutlierValues = scope.MoveToOuter(values),
            Options = o,
            Loss = loss,
            DampUsed = prep.Damp,
        };
        return result;
    }

    /// <summary>SpQR's min–max grid per row: range without forcing 0 in, real-valued zero, and a
    /// degenerate row mapped to [−1, 1].</summary>
    internal static (Tensor Scale, Tensor Zero) MinMax(Tensor x, int bits)
    {
        var xmin = x.amin([-1]);
        var xmax = x.amax([-1]);
        var same = xmin.eq(xmax);
        xmin = where(same, -1.0, xmin);
        xmax = where(same, 1.0, xmax);
        var scale = (xmax - xmin).div(Scalars.Of((long)((1 << bits) - 1)));
        return (scale, -xmin / scale);
    }

    /// <summary>Quantizes per-row statistics v [m] with a b-bit min–max grid per β2 consecutive rows
    /// (the last group may be shorter); writes the codes and fp16-exact second-level (scale, zero)
    /// and returns the values the weights will use. b ≥ 16 keeps v itself (rounded to fp16).</summary>
    internal static Tensor Bilevel(Tensor v, int bits, int beta2, Tensor codesOut, Tensor statsOut)
    {
        using var scope = NewDisposeScope();
        long m = v.shape[0];
        if (bits >= 16)
            throw new DotQuantException(ErrorCodes.ManifestValue, "SpQR statistics must be quantized (scale_bits and zero_bits 1–8)");
        long r = (m + beta2 - 1) / beta2;
        var padded = r * beta2 == m ? v : cat([v, v[-1].expand(r * beta2 - m)]);   // repeating the last value keeps min/max
        var (s2, z2) = MinMax(padded.view(r, beta2), bits);
        s2 = s2.to(ScalarType.Float16).to(ScalarType.Float32);
        z2 = z2.to(ScalarType.Float16).to(ScalarType.Float32);
        statsOut.copy_(stack([s2, z2], 1));
        var rows = Scalars.Range(m, ScalarType.Int64).div(Scalars.Of(beta2), RoundingMode.floor);
        var code = (v / s2.index_select(0, rows).clamp_min(Scalars.Of(1e-9))).Plus(z2.index_select(0, rows)).round_().clamp_(Scalars.Of(0L), Scalars.Of((long)((1 << bits) - 1)));
        codesOut.copy_(code);
        var used = SpqrLinear.SecondLevel(codesOut, statsOut, beta2);
        return scope.MoveToOuter(used.to(v.dtype));
    }

    /// <summary>Leave-one-out pre-selection (spec §3.5): reduction[r, c] = E_base[r] − E_without_c[r],
    /// the error a row saves if weight c were kept in fp16; candidates (reduction &gt; τ) are replaced
    /// by the mean of the row's other weights before the group's grid is fitted.</summary>
    internal static Tensor WithoutCandidates(Tensor gw, Tensor d, int bits, double tau)
    {
        var reduction = LeaveOneOutReduction(gw, d, bits);
        var candidate = Scalars.Use(tau, t => reduction.gt(t));
        var keep = candidate.logical_not();
        var kept = keep.sum([1], keepdim: true).clamp_min(Scalars.Of(1L));
        var mean = where(keep, gw, 0.0).sum([1], keepdim: true) / kept;
        return where(candidate, mean.expand_as(gw), gw);
    }

    internal static Tensor LeaveOneOutReduction(Tensor gw, Tensor d, int bits)
    {
        using var scope = NewDisposeScope();
        long m = gw.shape[0], k = gw.shape[1];
        double maxq = (1 << bits) - 1;
        Tensor Errors(Tensor x, Tensor dd)   // x [.., k'], dd broadcast: Σ ((x̂ − x)/d)² over the last dim
        {
            var (s, z) = MinMax(x, bits);
            var q = s.unsqueeze(-1) * ((x / s.unsqueeze(-1).clamp_min(Scalars.Of(1e-9))).Plus(z.unsqueeze(-1)).round().clamp(Scalars.Of(0L), Scalars.Of(maxq)) - z.unsqueeze(-1));
            return ((q - x) / dd).Squared().sum([-1]);
        }
        var baseline = Errors(gw, d);                                            // [m]
        if (k < 2) return zeros_like(gw);
        // others[c] = all columns but c: index [k, k−1]
        var idx = tensor(Enumerable.Range(0, (int)k).SelectMany(c => Enumerable.Range(0, (int)k).Where(x => x != c)).Select(x => (long)x).ToArray(), [k, k - 1]);
        var others = gw.index_select(1, idx.view(-1)).view(m, k, k - 1);
        var dOthers = d.index_select(0, idx.view(-1)).view(k, k - 1);
        var loo = Errors(others, dOthers);                                       // [m, k]
        return scope.MoveToOuter(baseline.unsqueeze(1) - loo);
    }
}
