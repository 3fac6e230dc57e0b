using static TorchSharp.torch;

namespace DotQuant.Engine.Models;

/// <summary>What a tensor is without its bytes.</summary>
public sealed record TensorShape(ScalarType DType, long[] Shape)
{
    public long Bytes => Shape.Aggregate(1L, (a, b) => a * b) * DType switch
    {
        ScalarType.Float64 or ScalarType.Int64 => 8,
        ScalarType.Float32 or ScalarType.Int32 => 4,
        ScalarType.BFloat16 or ScalarType.Float16 or ScalarType.Int16 => 2,
        _ => 1,
    };
}

/// <summary>Where an adapter gets its weights: a float checkpoint (memory-mapped), a quantized package
/// that dequantizes one linear when it is asked for, or a rotated view of a checkpoint. Nothing is
/// materialized until a tensor is requested, so a model of any depth costs one block at a time.</summary>
public interface IWeightSource
{
    string Directory { get; }
    /// <summary>Every tensor the source holds, in a stable order (what a writer copies through).</summary>
    IReadOnlyList<string> Names { get; }
    bool Contains(string name);
    /// <summary>A tensor's dtype and shape without loading it, or null when it is missing.</summary>
    TensorShape? Describe(string name);
    /// <summary>A floating-point weight with the expected shape (DQ0124/DQ0125 otherwise).</summary>
    Tensor Load(string name, params long[] expectedShape);
    /// <summary>A tensor as stored (any dtype, no shape check): what a writer copies through.</summary>
    Tensor LoadStored(string name);
    /// <summary>Rows <paramref name="rows"/> (int64) of a 2-D floating-point tensor in its stored dtype
    /// (embedding lookups without reading the whole table).</summary>
    Tensor LoadRows(string name, Tensor rows) => LoadRowsOfWhole(name, rows);

    /// <summary>Rows picked from the whole tensor (for sources that cannot read rows alone).</summary>
    Tensor LoadRowsOfWhole(string name, Tensor rows)
    {
        using var all = LoadStored(name);
        return all.index_select(0, rows);
    }
}
