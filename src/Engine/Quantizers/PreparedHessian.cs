using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Engine.Quantizers;

/// <summary>The preparation every OBS-style solver shares (spec §1.3): dead inputs (diag H = 0)
/// get diag 1 and zero weights, the optional act-order permutation sorts columns by diag H, and
/// U = chol((H + λI)⁻¹) in upper form with damping retries. W is a working copy in the permuted
/// order; <see cref="Restore"/> undoes the permutation.</summary>
public sealed class PreparedHessian : IDisposable
{
    public required Tensor W { get; init; }          // [m, n] working copy (permuted, dead zeroed)
    public required Tensor U { get; init; }          // [n, n] upper
    /// <summary>H in the permuted order with dead inputs fixed, undamped; H + λI is what was factorized.</summary>
    public required Tensor H { get; init; }
    public required double Lambda { get; init; }
    public required Tensor? Perm { get; init; }      // stored column j = original column Perm[j]
    public required Tensor? InvPerm { get; init; }
    public required double Damp { get; init; }

    public static PreparedHessian Create(Tensor w0, Tensor h, double damp, bool actOrder, ScalarType dtype, string layer, Action<string>? warn)
    {
        using var scope = NewDisposeScope();
        var W = w0.to(dtype, copy: true);
        var H = h.to(dtype, copy: true);
        var dead = H.diagonal().eq(Scalars.Of(0.0));
        if (dead.any().item<bool>())
        {
            H.diagonal().masked_fill_(dead, Scalars.Of(1.0));
            W.masked_fill_(dead.unsqueeze(0), Scalars.Of(0.0));
        }
        Tensor? perm = null, invperm = null;
        if (actOrder)
        {
            perm = H.diagonal().sort(0, descending: true, stable: true).Indices;
            invperm = perm.argsort(0);
            W = Permuted.Columns(W, perm);
            H = Permuted.Both(H, perm);
        }
        var factor = InverseCholesky.Factor(H, damp, layer, warn);
        return new PreparedHessian
        {
            W = scope.MoveToOuter(W), U = scope.MoveToOuter(factor.U), H = scope.MoveToOuter(H), Lambda = factor.Lambda,
            Perm = perm is null ? null : scope.MoveToOuter(perm), InvPerm = invperm is null ? null : scope.MoveToOuter(invperm),
            Damp = factor.Damp,
        };
    }

    /// <summary>Columns back to the original order.</summary>
    public Tensor Restore(Tensor permuted) => InvPerm is null ? permuted.clone() : permuted.index_select(1, InvPerm);

    public void Dispose()
    {
        W.Dispose(); U.Dispose(); H.Dispose(); Perm?.Dispose(); InvPerm?.Dispose();
    }
}
