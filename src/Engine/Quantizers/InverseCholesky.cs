using DotQuant.Runtime;
using static TorchSharp.torch;

namespace DotQuant.Engine.Quantizers;

/// <summary>U, the upper Cholesky factor of (H + λI)⁻¹ with λ = damp·mean(diag H) (spec §2.4).
/// When H + λI is not positive definite, damping grows by 0.01 of the mean diagonal per try
/// (GPTQModel's auto-increment) up to 1.0, and the caller is told which damping worked.</summary>
public static class InverseCholesky
{
    /// <param name="Lambda">λ = Damp·mean(diag H), the absolute damping that was added.</param>
    public sealed record Result(Tensor U, double Damp, int Retries, double Lambda);

    /// <param name="h">H; changed during the call (the damping) and restored exactly before it returns.</param>
    public static Result Factor(Tensor h, double damp, string layer, Action<string>? warn = null)
    {
        using var phase = Calibration.PhaseClock.Measure("factorization");
        using var scope = NewDisposeScope();
        double mean = h.diagonal().mean().to(ScalarType.Float64).item<double>();
        if (!double.IsFinite(mean))
            throw new DotQuantException(ErrorCodes.NonFinite, $"{layer}: the Hessian contains NaN or Inf (the calibration activations are not finite)");
        if (mean <= 0) mean = 1;   // all channels dead: the identity fix already made diag 1
        int retries = 0;
        // H is damped in place and its diagonal put back exactly afterwards (and before each retry),
        // so no n² copy is made; each n² intermediate is freed as soon as the next exists: H plus at
        // most two (an 28672² fp32 matrix is 3.3 GB).
        using var diagonal = h.diagonal().clone();
        for (double d = damp; ; d = Math.Round(d + 0.01, 10), retries++)
        {
            Scalars.Use(d * mean, lambda => h.diagonal().add_(lambda, Scalars.One));
            var (lower, info) = linalg.cholesky_ex(h, false);
            h.diagonal().copy_(diagonal);
            bool ok = info.item<int>() == 0;
            info.Dispose();
            if (ok)
            {
                var hinv = cholesky_inverse(lower, false);
                lower.Dispose();
                var (u, info2) = linalg.cholesky_ex(hinv, false);   // lower factor L of H⁻¹; U = Lᵀ
                hinv.Dispose();
                bool ok2 = info2.item<int>() == 0 && u.isfinite().all().item<bool>();
                info2.Dispose();
                if (ok2)
                {
                    if (retries > 0)
                        warn?.Invoke($"{layer}: H + λI was not positive definite at damp {damp}; succeeded at damp {d:0.##}");
                    var upper = u.t().contiguous();
                    u.Dispose();
                    return new Result(scope.MoveToOuter(upper), d, retries, d * mean);
                }
                u.Dispose();
            }
            else
                lower.Dispose();
            if (d >= 1.0)
                throw new DotQuantException(ErrorCodes.SingularHessian,
                    $"{layer}: H + λI is not positive definite even with damp 1.0 (calibration inputs degenerate?)");
        }
    }
}
