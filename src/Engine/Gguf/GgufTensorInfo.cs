namespace DotQuant.Engine.Gguf;

/// <summary>One tensor of a GGUF file. <see cref="Dims"/> are in ggml order: Dims[0] is the row
/// length (a torch weight [out, in] is Dims = [in, out]); <see cref="Offset"/> is relative to the
/// start of the data section.</summary>
public sealed record GgufTensorInfo(string Name, long[] Dims, GgmlType Type, long Offset)
{
    public long RowLength => Dims[0];
    public long Rows => Dims.Skip(1).Aggregate(1L, (a, b) => a * b);
    public long ElementCount => RowLength * Rows;
    public long Bytes => GgmlTypeInfo.Of(Type).RowBytes(RowLength) * Rows;
    /// <summary>The torch shape: ggml order reversed.</summary>
    public long[] Shape => Dims.Reverse().ToArray();
}
