using static TorchSharp.torch;

namespace DotQuant.Engine.Quantizers;

/// <summary>The factorizations of one true-sequential group. Its linears share one H (q/k/v, gate/up), so
/// U = chol((H + λI)⁻¹) — with the same damping, act order and dtype — is the same for each: the first
/// solve factorizes, the others reuse it (the factorization is n³; on a Llama block 3 of its 7 were
/// repeats). Keyed by the H tensor itself, so it must not outlive the group's statistics.</summary>
public sealed class FactorCache : IDisposable
{
    readonly Dictionary<Key, InverseCholesky.Result> _factors = new();

    public readonly record struct Key(IntPtr H, double Damp, bool ActOrder, ScalarType DType);

    /// <summary>The key of <paramref name="h"/> as the group hands it over — taken before a solver that
    /// consumes H changes or releases it.</summary>
    public static Key KeyOf(Tensor h, double damp, bool actOrder, ScalarType dtype) => new(h.Handle, damp, actOrder, dtype);

    /// <summary>The cached factor, or <paramref name="factor"/>'s result kept for the next linear. The U
    /// returned is the caller's own handle (it may dispose it).</summary>
    public InverseCholesky.Result GetOrAdd(Key key, Func<InverseCholesky.Result> factor)
    {
        if (!_factors.TryGetValue(key, out var kept))
        {
            kept = factor();
            kept.U.DetachFromDisposeScope();
            _factors[key] = kept;
        }
        return kept with { U = kept.U.alias() };
    }

    public void Dispose()
    {
        foreach (var f in _factors.Values) f.U.Dispose();
        _factors.Clear();
    }
}
