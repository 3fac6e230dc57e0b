using static TorchSharp.torch;

namespace DotQuant.Engine.Quantizers;

/// <summary>One entry point for every solver: the pipeline hands over a weight and its Hessian
/// (layer-wise or output-adaptive; none for round-to-nearest) and gets a <see cref="SolvedLinear"/> back.</summary>
public static class Solvers
{
    /// <param name="consumeH">The caller has no further use for <paramref name="h"/> (a solver may work on it in place).</param>
    /// <param name="factors">The group's shared factorizations (null: factorize every time).</param>
    public static SolvedLinear Solve(Tensor w0, Tensor? h, Tensor? d, SolverOptions o, string layer, Action<string>? warn = null,
        CancellationToken ct = default, bool consumeH = false, FactorCache? factors = null) => o.Kind switch
    {
        // A one-dimensional H is a diagonal importance (an importance matrix), which round-to-nearest weighs its grid search with.
        SolverKind.Rtn => RtnSolver.Solve(w0, o, h is { } imp && imp.dim() == 1 ? imp : null),
        SolverKind.Gptq => ColumnSolver.Solve(w0, Required(h, layer), d, o, layer, warn, ct, consumeH, factors),
        SolverKind.SpQR => SpqrSolver.Solve(w0, Required(h, layer), o.Spqr ?? new SpqrOptions(), layer, warn, ct),
        SolverKind.BiLLM => BillmSolver.Solve(w0, Required(h, layer), o.Billm ?? new BillmOptions(), layer, warn, ct),
        _ => throw new ArgumentOutOfRangeException(nameof(o)),
    };

    static Tensor Required(Tensor? h, string layer) =>
        h ?? throw new InvalidOperationException($"{layer}: the solver needs a Hessian and none was computed");

    /// <summary>The round-to-nearest baseline on the same integer grid, when the method has one
    /// (GPTQ's grid; SpQR's width and β1 groups without outliers or bilevel statistics).</summary>
    public static SolverOptions? RtnBaseline(SolverOptions o) => o.Kind switch
    {
        SolverKind.Gptq => o,
        SolverKind.SpQR => o with { Kind = SolverKind.Gptq, Bits = o.Spqr!.Bits, GroupSize = o.Spqr.GroupSize },
        _ => null,
    };
}
