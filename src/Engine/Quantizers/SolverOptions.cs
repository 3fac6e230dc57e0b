using static TorchSharp.torch;

namespace DotQuant.Engine.Quantizers;

/// <summary>ResComp's lazy-update semantics (spec §5.2): the reference switches on bit width.</summary>
public enum ResCompMode
{
    /// <summary>As the reference code: 'org' at 2 bits, 'allw' (with clamping) at 3 bits and more.</summary>
    Auto,
    /// <summary>In-place: the quantized column feeds the lazy update.</summary>
    Org,
    /// <summary>The pre-quantization column, clamped to the grid range, feeds the lazy update.</summary>
    AllW,
}

/// <summary>Which solver turns a weight (and its Hessian) into quantized weights.</summary>
public enum SolverKind { Rtn, Gptq, SpQR, BiLLM }

/// <summary>Everything one linear's solve needs besides its weight and statistics.</summary>
public sealed record SolverOptions
{
    /// <summary>GPTQ covers GPTAQ and ResComp (their terms are options of the same loop).</summary>
    public SolverKind Kind { get; init; } = SolverKind.Gptq;
    public SpqrOptions? Spqr { get; init; }
    public BillmOptions? Billm { get; init; }
    public int Bits { get; init; } = 4;
    /// <summary>Input channels per group; −1 = one group (per output channel).</summary>
    public int GroupSize { get; init; } = -1;
    public bool Symmetric { get; init; }
    public GridConvention Convention { get; init; } = GridConvention.Gptq;
    public bool MseClip { get; init; }
    public bool ActOrder { get; init; }
    public bool StaticGroups { get; init; }
    /// <summary>λ = Damp · mean(diag H) (percdamp).</summary>
    public double Damp { get; init; } = 0.01;
    /// <summary>Lazy-update block width B (spec §3.3).</summary>
    public int BlockSize { get; init; } = 128;
    /// <summary>GPTAQ's P scale α (0 = plain GPTQ). Applied only when D is given.</summary>
    public double Alpha { get; init; }
    /// <summary>ResComp's R scale α₂ (0 = off).</summary>
    public double Alpha2 { get; init; }
    public ResCompMode ResCompMode { get; init; } = ResCompMode.Auto;
    /// <summary>Round scales to fp16 while solving, so compensation targets the stored grid.</summary>
    public bool Fp16Scales { get; init; } = true;
    /// <summary>Solver precision (fp32 like the reference; fp64 for golden tests).</summary>
    public ScalarType DType { get; init; } = ScalarType.Float32;

    /// <summary>A GGUF block format to solve on (its blocks fix the group size), or null for the
    /// min–max integer grids of the GPTQ family.</summary>
    public Gguf.GgmlType? GgufType { get; init; }

    /// <summary>Weigh the grid search of each block with diag(H) of its columns (llama.cpp's importance-weighted
    /// scale search, fed from the solver's own statistics) where the grid family has one.</summary>
    public bool GridImportance { get; init; }

    public IGridFamily Grid => GgufType is { } t
        ? Gguf.Grids.GgufGridFamily.For(t)
        : new GridOptions(Bits, Symmetric, Convention, MseClip, Fp16Scales);
    public bool UsesResComp => Alpha2 != 0;
    public bool AllW => UsesResComp && (ResCompMode == ResCompMode.AllW || (ResCompMode == ResCompMode.Auto && Bits > 2));
}
