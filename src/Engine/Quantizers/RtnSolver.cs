using static TorchSharp.torch;

namespace DotQuant.Engine.Quantizers;

/// <summary>Round-to-nearest on the same grids and groups as the column solver, with no
/// statistics: the baseline every calibrator must beat.</summary>
public static class RtnSolver
{
    public static QuantizedLinear Solve(Tensor w0, SolverOptions o)
    {
        using var scope = NewDisposeScope();
        var W = w0.to(o.DType);
        long n = W.shape[1];
        int g = o.GroupSize == -1 ? (int)n : o.GroupSize;
        var codes = new List<Tensor>();
        var grids = new List<QuantGrid>();
        for (long c = 0; c < n; c += g)
        {
            var slice = W.narrow(1, c, Math.Min(g, n - c));
            var grid = o.Grid.Find(slice);
            grids.Add(grid);
            codes.Add(grid.Codes(slice));
        }
        var result = new QuantizedLinear
        {
            Codes = scope.MoveToOuter(cat(codes, 1).to(ScalarType.Byte)),
            Scales = scope.MoveToOuter(stack(grids.Select(x => x.Scale))),
            Zeros = scope.MoveToOuter(stack(grids.Select(x => x.Zero)).to(ScalarType.Int32)),
            GIdx = scope.MoveToOuter(arange(n, dtype: ScalarType.Int64).div(g, RoundingMode.floor).to(ScalarType.Int32)),
            Bits = o.Bits,
            GroupSize = o.GroupSize,
        };
        foreach (var x in grids) x.Dispose();
        return result;
    }
}
