using static TorchSharp.torch;

namespace DotQuant.Engine.Quantizers;

/// <summary>The grid of one group of input columns, per output row: what the column loop rounds onto.
/// <paramref name="column"/> arguments are the position of x's first column inside the group (grids
/// with sub-blocks, such as GGUF's k-quants, code each sub-block on its own scale).</summary>
public interface IColumnGrid : IDisposable
{
    /// <summary>Integer codes (as a floating tensor) for x [m] or [m, k].</summary>
    Tensor Codes(Tensor x, long column);

    /// <summary>The values the stored codes stand for, exactly as the runtime computes them.</summary>
    Tensor Dequantize(Tensor codes, long column);

    /// <summary>The representable range per row at that column (ResComp's clamp).</summary>
    (Tensor Min, Tensor Max) Range(long column);
}

/// <summary>Where a linear's grids come from and how a solved linear is assembled from them: the
/// min–max integer grids of the GPTQ family (<see cref="GridOptions"/>), or a GGUF block format. A new
/// storage grid adds one of these; the solvers do not change.</summary>
public interface IGridFamily
{
    /// <summary>The group size the format fixes (GGUF blocks), or null when the options choose it.</summary>
    int? BlockSize { get; }

    /// <summary>True when a group's grid is found from the error-updated weights when the column loop
    /// reaches it; false keeps the reference GPTQ code's grid from the not-yet-updated block (quirk Q3).</summary>
    bool FreshGroups { get; }

    /// <summary>The grid for a slice w [m, g] of one group.</summary>
    IColumnGrid Find(Tensor w);

    /// <summary>The grid for a slice w [m, g], its scale search weighted by an importance per column [g]
    /// (diag H over the group) where the family has a weighted search; otherwise as <see cref="Find(Tensor)"/>.</summary>
    IColumnGrid Find(Tensor w, Tensor? importance) => Find(w);

    /// <summary>The solved linear from codes [m, n] (uint8, original column order), the group grids in
    /// group order and the group of each input column. Takes ownership of nothing.</summary>
    SolvedLinear Assemble(Tensor codes, IReadOnlyList<IColumnGrid> grids, Tensor gIdx, SolverOptions o, double loss, double damp);

    /// <summary>Round-to-nearest with a diagonal importance per input column (llama.cpp's imatrix): the
    /// grid family's own weighted scale search, or null when it has none.</summary>
    SolvedLinear? RoundWithImportance(Tensor w, float[] importance) => null;
}
