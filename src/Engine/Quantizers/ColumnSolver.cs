using DotQuant.Runtime;
using DotQuant.Engine.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DotQuant.Engine.Quantizers;

/// <summary>The one column loop behind GPTQ, GPTAQ and ResComp (spec §3.4, §4.3, §5.2). Column j
/// is quantized, its error e_j = (w_j − q_j)/U_jj is pushed onto the later columns through U, and
/// the optional terms add GPTAQ's w_j·P_j (asymmetric calibration, P = α·triu1(D Uᵀ)U) and
/// ResComp's (W0_j − w_j)·R_j (compensation-aware error, R = α₂·triu1((H+D) Uᵀ)U). Updates are
/// applied lazily in blocks of B columns. The reference code's semantics are kept where they
/// change results (stale group grid inside a block; the quantized block feeding the lazy P/R
/// update in 'org' mode) so that results match published numbers; see docs/calibration.md.</summary>
public static class ColumnSolver
{
    /// <param name="w0">Original weight [m, n] (any float dtype).</param>
    /// <param name="h">H = (2/N)·X_q X_qᵀ [n, n]; not modified unless <paramref name="consumeH"/>.</param>
    /// <param name="d">D = (2/N)·(X_f − X_q) X_qᵀ [n, n] or null when X_f = X_q.</param>
    /// <param name="consumeH">The caller has no further use for <paramref name="h"/>: the solver works on
    /// it in place and disposes it instead of copying it (one n² matrix less at the peak).</param>
    /// <param name="factors">Shares U between the linears of a group that share <paramref name="h"/>.</param>
    public static SolvedLinear Solve(Tensor w0, Tensor h, Tensor? d, SolverOptions o, string layer = "layer", Action<string>? warn = null,
        CancellationToken ct = default, bool consumeH = false, FactorCache? factors = null)
    {
        using var scope = NewDisposeScope();
        var dt = o.DType;
        var factorKey = factors is null ? default : FactorCache.KeyOf(h, o.Damp, o.ActOrder, dt);
        long m = w0.shape[0], n = w0.shape[1];
        int g = o.GroupSize == -1 ? (int)n : o.GroupSize;
        if (h.shape[0] != n || h.shape[1] != n)
            throw new ArgumentException($"{layer}: H is [{string.Join(",", h.shape)}], expected [{n},{n}]");

        var W = w0.to(dt, copy: true);
        var H = consumeH && h.dtype == dt ? h : h.to(dt, copy: true);
        var D = d?.to(dt, copy: true);
        bool useP = D is not null && o.Alpha != 0;
        bool useR = o.UsesResComp;
        // C = X_f X_qᵀ = H + D from the undamped H, before dead-channel handling (reference).
        var C = useR ? (D is null ? H.clone() : H.Plus(D)) : null;
        var grid = o.Grid;
        if (grid.BlockSize is int fixedGroup && fixedGroup != g)
            throw new ArgumentException($"{layer}: the grid's blocks are {fixedGroup} columns; group size {o.GroupSize} was asked for");
        int B = Math.Max(1, o.BlockSize);
        // A fresh grid is found inside the lazy block, so no group may straddle two blocks.
        if (grid.FreshGroups && o.GroupSize != -1 && B % g != 0) B = (B + g - 1) / g * g;

        // Quirk Q1: the first grid sees W before dead columns are zeroed.
        IColumnGrid? current = o.GroupSize == -1 ? grid.Find(W) : null;
        long groupStart = 0;

        var dead = H.diagonal().eq(Scalars.Of(0.0));
        if (dead.any().item<bool>())
        {
            H.diagonal().masked_fill_(dead, Scalars.Of(1.0));
            W.masked_fill_(dead.unsqueeze(0), Scalars.Of(0.0));
            D?.masked_fill_(dead.unsqueeze(0), Scalars.Of(0.0));
        }
        var W0 = useR ? W.clone() : null;   // dead columns zeroed in W0 too
        // diag(H) ∝ Σx² per column: the importance llama.cpp's weighted scale searches take (spec §7).
        var importance = o.GridImportance ? H.diagonal().clone() : null;

        IColumnGrid[]? staticGrids = null;
        if (o.StaticGroups && o.GroupSize != -1)
            staticGrids = Enumerable.Range(0, (int)((n + g - 1) / g))
                .Select(k => grid.Find(W.narrow(1, k * g, Math.Min(g, n - k * g)), importance?.narrow(0, k * g, Math.Min(g, n - k * g)))).ToArray();

        Tensor? perm = null, invperm = null;
        if (o.ActOrder)
        {
            perm = H.diagonal().sort(0, descending: true, stable: true).Indices;
            invperm = perm.argsort(0);
            W = Permuted.Columns(W, perm);
            H = Permuted.Both(H, perm);
            D = D is null ? null : Permuted.Both(D, perm);
            C = C is null ? null : Permuted.Both(C, perm);
            W0 = W0 is null ? null : Permuted.Columns(W0, perm);
            importance = importance?.index_select(0, perm);
        }
        long[]? permHost = perm?.data<long>().ToArray();

        // Keyed by the caller's h (the group's shared H); H's fixes above depend on H alone, not on W.
        var factor = factors is null ? InverseCholesky.Factor(H, o.Damp, layer, warn)
            : factors.GetOrAdd(factorKey, () => InverseCholesky.Factor(H, o.Damp, layer, warn));
        var U = factor.U;
        var P = useP ? MultiplyTriu1(D!, U, o.Alpha) : null;
        var R = useR ? MultiplyTriu1(C!, U, o.Alpha2) : null;
        H.Dispose(); D?.Dispose(); C?.Dispose();

        var Q = zeros(m, n, dtype: dt);
        var codes = zeros(m, n, dtype: ScalarType.Byte);
        var created = new List<IColumnGrid>();     // dynamic grids in creation order
        if (current is not null) created.Add(current);
        double loss = 0;
        bool allw = o.AllW;

        for (long i1 = 0; i1 < n; i1 += B)
        {
            using var blockScope = NewDisposeScope();
            long i2 = Math.Min(i1 + B, n), count = i2 - i1;
            var W1 = W.narrow(1, i1, count).clone();
            var Err = zeros(m, count, dtype: dt);
            var U1 = U.narrow(0, i1, count).narrow(1, i1, count);
            var P1 = P?.narrow(0, i1, count).narrow(1, i1, count);
            var R1 = R?.narrow(0, i1, count).narrow(1, i1, count);
            var W01 = W0?.narrow(1, i1, count);

            for (long t = 0; t < count; t++)
            {
                ct.ThrowIfCancellationRequested();
                long c = i1 + t;
                if (o.GroupSize != -1)
                {
                    if (staticGrids is not null)
                    {
                        long original = permHost is null ? c : permHost[c];
                        current = staticGrids[original / g];
                        groupStart = original / g * g;
                    }
                    else if (c % g == 0)
                    {
                        // Quirk Q3 (reference grids): the grid comes from the outer W, which has not yet
                        // received the in-block updates of this block when g < B. Fresh grids (GGUF
                        // blocks) see the error-updated columns.
                        long width = Math.Min(g, n - c);
                        current = grid.Find(grid.FreshGroups ? W1.narrow(1, t, width) : W.narrow(1, c, width), importance?.narrow(0, c, width));
                        created.Add(current);
                        groupStart = c;
                    }
                }
                using var colScope = NewDisposeScope();
                var w = W1.select(1, t).clone();
                long within = staticGrids is not null ? (permHost is null ? c : permHost[c]) - groupStart : c - groupStart;
                var code = current!.Codes(w, within);
                var q = current.Dequantize(code, within);
                Q.select(1, c).copy_(q);
                codes.select(1, c).copy_(code);
                double ujj = U1[t, t].to(ScalarType.Float64).item<double>();
                var e = Scalars.Use(ujj, u => (w - q).div_(u));
                Err.select(1, t).copy_(e);
                loss += e.pow(Scalars.Of(2L)).sum().to(ScalarType.Float64).item<double>();

                // 'org' updates from column t (which thereby becomes q); 'allw' keeps column t = w.
                long from = allw ? t + 1 : t;
                if (from < count)
                {
                    var rest = W1.narrow(1, from, count - from);
                    rest.addr_(e, U1[t].narrow(0, from, count - from), 1, -1);
                    if (P1 is not null) rest.addr_(w, P1[t].narrow(0, from, count - from), 1, 1);
                    if (R1 is not null) rest.addr_(W01!.select(1, t) - w, R1[t].narrow(0, from, count - from), 1, 1);
                }
            }

            if (i2 < n)
            {
                var later = W.narrow(1, i2, n - i2);
                later.sub_(Err.matmul(U.narrow(0, i1, count).narrow(1, i2, n - i2)));
                if (P is not null || R is not null)
                {
                    // The block as the reference leaves it: quantized values ('org'), or the
                    // pre-quantization values clamped to the last grid's range ('allw').
                    var source = W1;
                    if (allw)
                    {
                        var (lo, hi) = current!.Range(0);
                        source = W1.clamp(lo.unsqueeze(1), hi.unsqueeze(1));
                    }
                    if (P is not null) later.add_(source.matmul(P.narrow(0, i1, count).narrow(1, i2, n - i2)), Scalars.One);
                    if (R is not null) later.add_((W01! - source).matmul(R.narrow(0, i1, count).narrow(1, i2, n - i2)), Scalars.One);
                }
            }
        }

        if (invperm is not null)
        {
            Q = Q.index_select(1, invperm);
            codes = codes.index_select(1, invperm);
        }
        if (!Q.isfinite().all().item<bool>() || !double.IsFinite(loss))
            throw new DotQuantException(ErrorCodes.NonFinite, $"{layer}: the solver produced NaN or Inf (check the calibration data and damping)");

        var gIdx = GroupIndex(n, g, o, invperm);
        var grids = staticGrids ?? created.ToArray();
        var result = grid.Assemble(codes, grids, gIdx, o, loss, factor.Damp);
        foreach (var x in grids) x.Dispose();
        return result;
    }

    /// <summary>α · triu1(A Uᵀ) · U (spec §4.2 Theorem 4.2; §5.1 for R).</summary>
    internal static Tensor MultiplyTriu1(Tensor a, Tensor u, double alpha)
    {
        using var scope = NewDisposeScope();
        var r = Scalars.Use(alpha, s => a.matmul(u.t()).triu(1).matmul(u).mul_(s));
        return scope.MoveToOuter(r);
    }

    /// <summary>g_idx per spec §2.6.</summary>
    static Tensor GroupIndex(long n, int g, SolverOptions o, Tensor? invperm)
    {
        if (o.GroupSize == -1) return zeros(n, dtype: ScalarType.Int32);
        var k = o.ActOrder && !o.StaticGroups ? invperm! : Scalars.Range(n, ScalarType.Int64);
        return k.div(Scalars.Of(g), RoundingMode.floor).to(ScalarType.Int32);
    }
}
