namespace DotQuant.Engine.Gguf.Grids;

/// <summary>A linear solved on a GGUF grid elsewhere (another process of a distributed run), held as the
/// llama.cpp bytes it was encoded to: those bytes are what every GGUF linear finally is, so it writes and
/// dequantizes exactly as the solver's own linear does.</summary>
public sealed class EncodedRowsLinear(GgmlType type, byte[] rows, long outFeatures, long inFeatures) : GgufRowsLinear
{
    readonly long _rowBytes = GgmlTypeInfo.Of(type).RowBytes(inFeatures);

    public override GgmlType Type => type;
    public override long OutFeatures => outFeatures;
    public override long InFeatures => inFeatures;

    public override byte[] EncodeRows(long first, long count) => rows.AsSpan(checked((int)(first * _rowBytes)), checked((int)(count * _rowBytes))).ToArray();

    public override void Dispose() { }
}
