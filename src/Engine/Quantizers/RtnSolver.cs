using static TorchSharp.torch;

namespace DotQuant.Engine.Quantizers;

/// <summary>Round-to-nearest on the same grids and groups as the column solver, with no
/// statistics: the baseline every calibrator must beat.</summary>
public static class RtnSolver
{
    /// <param name="importance">A diagonal importance per input column (an importance matrix's), used by
    /// grids that have an importance-weighted search (llama.cpp's); null rounds without one.</param>
    public static SolvedLinear Solve(Tensor w0, SolverOptions o, Tensor? importance = null)
    {
        if (importance is not null)
        {
            using var imp = importance.to(ScalarType.Float32).contiguous();
            return o.Grid.RoundWithImportance(w0, imp.data<float>().ToArray())
                ?? throw new InvalidOperationException("round-to-nearest with an importance matrix needs a grid with a weighted search (a GGUF type)");
        }
        using var scope = NewDisposeScope();
        var W = w0.to(o.DType);
        long n = W.shape[1];
        int g = o.GroupSize == -1 ? (int)n : o.GroupSize;
        var family = o.Grid;
        if (family.BlockSize is int fixedGroup && fixedGroup != g)
            throw new ArgumentException($"the grid's blocks are {fixedGroup} columns; group size {o.GroupSize} was asked for");
        var codes = new List<Tensor>();
        var grids = new List<IColumnGrid>();
        for (long c = 0; c < n; c += g)
        {
            var slice = W.narrow(1, c, Math.Min(g, n - c));
            var grid = family.Find(slice);
            grids.Add(grid);
            codes.Add(grid.Codes(slice, 0));
        }
        var gIdx = Scalars.Range(n, ScalarType.Int64).div(Scalars.Of(g), RoundingMode.floor).to(ScalarType.Int32);
        var result = family.Assemble(cat(codes, 1).to(ScalarType.Byte), grids, gIdx, o, double.NaN, 0);
        foreach (var x in grids) x.Dispose();
        return result;
    }
}
