using DotQuant.Runtime;
using static TorchSharp.torch;

namespace DotQuant.Engine.Quantizers;

/// <summary>BiLLM (spec §4.2, the reference code path): per block of columns, a salience matrix
/// S picks how many whole columns are salient (residual binarization, two terms) and where to
/// split the rest into a concentrated and a sparse group (one term each); the block is binarized
/// at once from its compensated weights and its error is pushed onto later blocks (no intra-block
/// compensation, as in the paper).</summary>
public static class BillmSolver
{
    public static BinaryLinear Solve(Tensor w0, Tensor h, BillmOptions o, string layer = "layer", Action<string>? warn = null, CancellationToken ct = default)
    {
        using var scope = NewDisposeScope();
        long m = w0.shape[0], n = w0.shape[1];
        int B = Math.Max(1, o.BlockSize);
        using var prep = PreparedHessian.Create(w0, h, o.Damp, actOrder: false, o.DType, layer, warn);
        var W = prep.W;
        var W0 = W.clone();
        var U = prep.U;
        var denominators = o.Metric == SalienceMetric.HessianInverseDiagonal ? U.Squared().sum([0]) : U.diagonal();

        long blocks = (n + B - 1) / B;
        var signs = zeros(m, n, dtype: ScalarType.Bool);
        var residual = zeros(m, n, dtype: ScalarType.Bool);
        var sparse = zeros(m, n, dtype: ScalarType.Bool);
        var salient = zeros(n, dtype: ScalarType.Bool);
        var prms = zeros(blocks, m, 8, dtype: W.dtype);

        for (long c0 = 0, b = 0; c0 < n; c0 += B, b++)
        {
            ct.ThrowIfCancellationRequested();
            using var blockScope = NewDisposeScope();
            long count = Math.Min(B, n - c0);
            var wb = W.narrow(1, c0, count);
            var s = o.Metric == SalienceMetric.Magnitude ? wb : wb.Squared() / denominators.narrow(0, c0, count).Squared();
            var target = o.SearchOnSalience ? s : wb;

            var salientCols = SearchSalient(target, s, o.MaxSalient);
            var m3 = zeros(m, count, dtype: ScalarType.Bool);
            if (salientCols.numel() > 0) m3.index_fill_(1, salientCols, Scalars.Of(true));
            var (m1, m2) = SearchSplit(target, m3);

            var pc = Binarize(wb, m1, 1, fp16: true);
            var ps = Binarize(wb, m2, 1, fp16: true);
            var pr = Binarize(wb, m3, 2, fp16: true);
            var q = pc.Value.Plus(ps.Value).Plus(pr.Value);
            var p = prms[b];
            p.select(1, 0).copy_(pc.Mu[0]); p.select(1, 1).copy_(pc.Alpha[0]);
            p.select(1, 2).copy_(ps.Mu[0]); p.select(1, 3).copy_(ps.Alpha[0]);
            p.select(1, 4).copy_(pr.Mu[0]); p.select(1, 5).copy_(pr.Alpha[0]);
            p.select(1, 6).copy_(pr.Mu[1]); p.select(1, 7).copy_(pr.Alpha[1]);
            signs.narrow(1, c0, count).copy_(where(m1, pc.Signs[0], where(m2, ps.Signs[0], pr.Signs[0])));
            residual.narrow(1, c0, count).copy_(pr.Signs[1].logical_and(m3));
            sparse.narrow(1, c0, count).copy_(m2);
            salient.narrow(0, c0, count).copy_(m3[0]);

            var err = (wb - q) / U.diagonal().narrow(0, c0, count);
            wb.copy_(q);
            if (c0 + count < n)
                W.narrow(1, c0 + count, n - c0 - count).sub_(err.matmul(U.narrow(0, c0, count).narrow(1, c0 + count, n - c0 - count)));
        }
        if (!W.isfinite().all().item<bool>())
            throw new DotQuantException(ErrorCodes.NonFinite, $"{layer}: the BiLLM solver produced NaN or Inf (check the calibration data and damping)");

        var salientIdx = salient.nonzero().squeeze(1);
        var dw = W0 - W;
        var damped = Scalars.Use(prep.Lambda, lambda => prep.H.Plus(eye(n, dtype: prep.H.dtype).mul(lambda)));
        double loss = dw.matmul(damped).mul_(dw).sum().to(ScalarType.Float64).item<double>();
        var result = new BinaryLinear
        {
            Signs = scope.MoveToOuter(signs),
            ResidualSigns = scope.MoveToOuter(residual.index_select(1, salientIdx)),
            Sparse = scope.MoveToOuter(sparse),
            Salient = scope.MoveToOuter(salient),
            Params = scope.MoveToOuter(prms.to(ScalarType.Float32)),
            BlockSize = B,
            Loss = loss,
            DampUsed = prep.Damp,
        };
        return result;
    }

    /// <summary>The top-k* columns by Σ_r |S_rj|, k* ∈ [1, cap − 1] minimising the order-2
    /// binarization error of S split into salient and the rest (the reference's proxy).</summary>
    static Tensor SearchSalient(Tensor target, Tensor s, int maxSalient)
    {
        long m = s.shape[0], count = s.shape[1];
        int cap = (int)Math.Min(maxSalient, count);
        var order = s.abs().sum([0]).sort(0, descending: true, stable: true).Indices;
        if (cap < 2) return order.narrow(0, 0, 0);
        double best = double.PositiveInfinity;
        int bestK = 1;
        for (int k = 1; k < cap; k++)
        {
            using var trial = NewDisposeScope();
            var m3 = zeros(m, count, dtype: ScalarType.Bool).index_fill_(1, order.narrow(0, 0, k), Scalars.Of(true));
            var approx = Binarize(target, m3, 2).Value.Plus(Binarize(target, m3.logical_not(), 2).Value);
            double e = (target - approx).Squared().mean().to(ScalarType.Float64).item<double>();
            if (e < best) { best = e; bestK = k; }
        }
        return order.narrow(0, 0, bestK).sort().Values;
    }

    /// <summary>The break point p* among the 10th…90th percentiles (numpy's linear interpolation)
    /// of |target| outside the salient columns (zeros there included, as in the reference).</summary>
    static (Tensor Concentrated, Tensor Sparse) SearchSplit(Tensor target, Tensor m3)
    {
        var rest = m3.logical_not();
        var magnitude = target.abs();
        var sorted = where(rest, magnitude, 0.0).flatten().sort().Values.to(ScalarType.Float64);
        long count = sorted.numel();
        var salientPart = Binarize(target, m3, 2).Value;
        double best = double.PositiveInfinity;
        Tensor? bestM1 = null, bestM2 = null;
        var sortedHost = sorted.data<double>().ToArray();
        for (int i = 10; i <= 90; i++)
        {
            double pos = i / 100.0 * (count - 1);
            long lo = (long)Math.Floor(pos);
            long hi = Math.Min(lo + 1, count - 1);
            double p = sortedHost[lo] + (sortedHost[hi] - sortedHost[lo]) * (pos - lo);
            using var trial = NewDisposeScope();
            var below = Scalars.Use(p, threshold => magnitude.lt(threshold));
            var m1 = rest.logical_and(below);
            var m2 = rest.logical_and(below.logical_not());
            var approx = Binarize(target, m1, 1).Value.Plus(Binarize(target, m2, 1).Value).Plus(salientPart);
            double e = (target - approx).Squared().mean().to(ScalarType.Float64).item<double>();
            if (e < best)
            {
                best = e;
                bestM1?.Dispose(); bestM2?.Dispose();
                bestM1 = m1.DetachFromDisposeScope(); bestM2 = m2.DetachFromDisposeScope();
            }
        }
        return (bestM1!, bestM2!);
    }

    public sealed record BinaryTerms(Tensor Value, Tensor[] Mu, Tensor[] Alpha, Tensor[] Signs);

    /// <summary>Order-k residual binarization of the entries of a selected by mask, per row:
    /// μ = mean of the residual, α = mean |residual − μ|, term = μ + α·sign (sign(0) = +1, so one bit
    /// stores it). Rows with an empty mask get μ = α = 0. With fp16, μ and α are rounded to the
    /// stored precision before they are used.</summary>
    public static BinaryTerms Binarize(Tensor a, Tensor mask, int order, bool fp16 = false)
    {
        var maskF = mask.to(a.dtype);
        var counts = maskF.sum([1]).clamp_min(Scalars.Of(1L));
        var value = zeros_like(a);
        var mus = new Tensor[order];
        var alphas = new Tensor[order];
        var signs = new Tensor[order];
        for (int k = 0; k < order; k++)
        {
            var r = (a - value) * maskF;
            var mu = r.sum([1]) / counts;
            var alpha = ((r - mu.unsqueeze(1)).abs() * maskF).sum([1]) / counts;
            if (fp16)
            {
                mu = mu.to(ScalarType.Float16).to(a.dtype);
                alpha = alpha.to(ScalarType.Float16).to(a.dtype);
            }
            var sign = (r - mu.unsqueeze(1)).ge(Scalars.Of(0L));
            value = value.Plus(maskF * BinaryLinear.Term(mu, alpha, sign));
            mus[k] = mu; alphas[k] = alpha; signs[k] = sign;
        }
        return new BinaryTerms(value, mus, alphas, signs);
    }
}
