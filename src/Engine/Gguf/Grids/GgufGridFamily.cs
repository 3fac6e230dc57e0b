using DotQuant.Runtime;
using DotQuant.Engine.Gguf.Blocks;
using DotQuant.Engine.Quantizers;
using static TorchSharp.torch;

namespace DotQuant.Engine.Gguf.Grids;

/// <summary>A GGUF block format as the solvers' grid family: blocks of 32 input columns, each row's
/// grid fixed when the column loop reaches the block (from the error-updated weights), solved linears
/// assembled as <see cref="GgufLinear"/>.</summary>
public sealed class GgufGridFamily : IGridFamily
{
    readonly LegacyGrid.Rule _rule;
    readonly int _bits;
    readonly KQuantCodec? _kquant;

    public GgmlType Type { get; }
    public int? BlockSize => GgmlTypeInfo.Of(Type).BlockSize;
    public bool FreshGroups => true;

    GgufGridFamily(GgmlType type, LegacyGrid.Rule rule, int bits) { Type = type; _rule = rule; _bits = bits; }
    GgufGridFamily(GgmlType type, KQuantCodec codec) { Type = type; _kquant = codec; }

    public static GgufGridFamily For(GgmlType type) => type switch
    {
        GgmlType.Q4_0 => new(type, LegacyGrid.Rule.Symmetric, 4),
        GgmlType.Q5_0 => new(type, LegacyGrid.Rule.Symmetric, 5),
        GgmlType.Q4_1 => new(type, LegacyGrid.Rule.Affine, 4),
        GgmlType.Q5_1 => new(type, LegacyGrid.Rule.Affine, 5),
        GgmlType.Q8_0 => new(type, LegacyGrid.Rule.Q8, 8),
        GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K => new(type, (KQuantCodec)BlockCodec.For(type)),
        _ => throw new DotQuantException(ErrorCodes.GgufUnsupported, $"solving on {type} blocks is not supported (q4_0, q4_1, q5_0, q5_1, q8_0 and q2_k to q6_k are)"),
    };

    public IColumnGrid Find(Tensor w) => _kquant is { } k ? KQuantGrid.Find(k, w) : LegacyGrid.Find(_rule, _bits, w);

    /// <summary>The k-quants take llama.cpp's importance-weighted search (quantize_row_*_K_impl); the
    /// 32-element types keep the reference rule for now.</summary>
    public IColumnGrid Find(Tensor w, Tensor? importance) =>
        _kquant is { } k && importance is not null ? KQuantGrid.Find(k, w, importance) : Find(w);

    /// <summary>llama-quantize --imatrix: every row through the type's importance-weighted quantizer,
    /// the linear kept as the bytes it gives.</summary>
    public SolvedLinear? RoundWithImportance(Tensor w, float[] importance)
    {
        var codec = BlockCodec.For(Type);
        int n = (int)w.shape[1];
        using var x = w.to(ScalarType.Float32).contiguous();
        var bytes = codec.QuantizeRows(x.data<float>().ToArray(), n, importance);
        return new EncodedRowsLinear(Type, bytes, w.shape[0], n);
    }

    public SolvedLinear Assemble(Tensor codes, IReadOnlyList<IColumnGrid> grids, Tensor gIdx, SolverOptions o, double loss, double damp)
    {
        if (_kquant is not null)
            return new KQuantLinear(Type, codes.to(ScalarType.Byte, copy: true).DetachFromDisposeScope(), grids.Cast<KQuantGrid>().Select(g => g.Headers).ToArray())
            { Loss = loss, DampUsed = damp };
        var blocks = grids.Cast<LegacyGrid>().ToArray();
        return new GgufLinear(Type,
            codes.to(ScalarType.Byte, copy: true).DetachFromDisposeScope(),
            stack(blocks.Select(b => b.D16)).DetachFromDisposeScope(),
            stack(blocks.Select(b => b.M16)).DetachFromDisposeScope(),
            gIdx.to(ScalarType.Int64, copy: true).DetachFromDisposeScope())
        { Loss = loss, DampUsed = damp };
    }
}
