using static TorchSharp.torch;

namespace DotQuant.Engine.Quantizers;

/// <summary>One entry point for every Hessian-based solver: the pipeline hands over a weight and
/// its Hessian (layer-wise or output-adaptive) and gets a <see cref="SolvedLinear"/> back.</summary>
public static class Solvers
{
    public static SolvedLinear Solve(Tensor w0, Tensor h, Tensor? d, SolverOptions o, string layer, Action<string>? warn = null) => o.Kind switch
    {
        SolverKind.Gptq => ColumnSolver.Solve(w0, h, d, o, layer, warn),
        SolverKind.SpQR => SpqrSolver.Solve(w0, h, o.Spqr ?? new SpqrOptions(), layer, warn),
        SolverKind.BiLLM => BillmSolver.Solve(w0, h, o.Billm ?? new BillmOptions(), layer, warn),
        _ => throw new ArgumentOutOfRangeException(nameof(o)),
    };

    /// <summary>The round-to-nearest baseline on the same integer grid, when the method has one
    /// (GPTQ's grid; SpQR's width and β1 groups without outliers or bilevel statistics).</summary>
    public static SolverOptions? RtnBaseline(SolverOptions o) => o.Kind switch
    {
        SolverKind.Gptq => o,
        SolverKind.SpQR => o with { Kind = SolverKind.Gptq, Bits = o.Spqr!.Bits, GroupSize = o.Spqr.GroupSize },
        _ => null,
    };
}
