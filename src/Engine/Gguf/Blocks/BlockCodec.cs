namespace DotQuant.Engine.Gguf.Blocks;

/// <summary>One GGUF block format: how a row of floats is stored and read back. <see cref="Quantize"/>
/// is llama.cpp's reference quantizer for the type (quantize_row_*_ref: round to nearest with that
/// type's scale rule, float arithmetic in the same order), so its bytes equal llama-quantize's
/// without an importance matrix; <see cref="Dequantize"/> is what llama.cpp computes with.</summary>
public abstract class BlockCodec
{
    public abstract GgmlType Type { get; }
    public GgmlTypeInfo Info => GgmlTypeInfo.Of(Type);

    /// <summary>Quantizes one row (a multiple of the block size) into <see cref="GgmlTypeInfo.RowBytes"/> bytes.</summary>
    public abstract void Quantize(ReadOnlySpan<float> row, Span<byte> destination);

    public abstract void Dequantize(ReadOnlySpan<byte> source, Span<float> row);

    /// <summary>Quantizes one row as llama-quantize does with an importance matrix (quantize_row_*_impl with
    /// quant_weights): <paramref name="importance"/> holds imp_j = Σx_j²/T per column of the row. Types
    /// llama.cpp quantizes without weights (floats, Q8_0) ignore it; empty means no importance.</summary>
    public virtual void Quantize(ReadOnlySpan<float> row, Span<byte> destination, ReadOnlySpan<float> importance) => Quantize(row, destination);

    /// <summary>Whether <see cref="Quantize(ReadOnlySpan{float}, Span{byte}, ReadOnlySpan{float})"/> uses the importance.</summary>
    public virtual bool UsesImportance => false;

    /// <summary>Consecutive rows of <paramref name="rowLength"/> elements, each quantized as one row.</summary>
    public byte[] QuantizeRows(ReadOnlySpan<float> values, int rowLength)
    {
        int rowBytes = (int)Info.RowBytes(rowLength), rows = values.Length / rowLength;
        var bytes = new byte[(long)rowBytes * rows];
        for (int r = 0; r < rows; r++)
            Quantize(values.Slice(r * rowLength, rowLength), bytes.AsSpan(r * rowBytes, rowBytes));
        return bytes;
    }

    /// <summary>Consecutive rows, each quantized with the same per-column <paramref name="importance"/>.</summary>
    public byte[] QuantizeRows(ReadOnlySpan<float> values, int rowLength, ReadOnlySpan<float> importance)
    {
        if (!importance.IsEmpty && importance.Length != rowLength)
            throw new ArgumentException($"{Type}: {importance.Length} importance values for rows of {rowLength}");
        int rowBytes = (int)Info.RowBytes(rowLength), rows = values.Length / rowLength;
        var bytes = new byte[(long)rowBytes * rows];
        for (int r = 0; r < rows; r++)
            Quantize(values.Slice(r * rowLength, rowLength), bytes.AsSpan(r * rowBytes, rowBytes), importance);
        return bytes;
    }

    /// <summary>Consecutive stored rows of <paramref name="rowLength"/> elements, decoded.</summary>
    public float[] DequantizeRows(ReadOnlySpan<byte> bytes, int rowLength)
    {
        int rowBytes = (int)Info.RowBytes(rowLength), rows = bytes.Length / rowBytes;
        var values = new float[(long)rowLength * rows];
        for (int r = 0; r < rows; r++)
            Dequantize(bytes.Slice(r * rowBytes, rowBytes), values.AsSpan(r * rowLength, rowLength));
        return values;
    }

    static readonly Dictionary<GgmlType, BlockCodec> Codecs = new BlockCodec[]
    {
        new F32Codec(), new F16Codec(), new BF16Codec(),
        new Q4_0Codec(), new Q4_1Codec(), new Q5_0Codec(), new Q5_1Codec(), new Q8_0Codec(),
        new Q2_KCodec(), new Q3_KCodec(), new Q4_KCodec(), new Q5_KCodec(), new Q6_KCodec(),
    }.ToDictionary(c => c.Type);

    public static bool TryGet(GgmlType type, out BlockCodec codec) => Codecs.TryGetValue(type, out codec!);

    public static BlockCodec For(GgmlType type) =>
        Codecs.TryGetValue(type, out var c) ? c : throw new NotSupportedException($"ggml type {type} has no codec here");

    protected void CheckLengths(int elements, int bytes)
    {
        var info = Info;
        if (elements % info.BlockSize != 0)
            throw new ArgumentException($"{Type}: a row of {elements} is not a multiple of the block of {info.BlockSize}");
        if (bytes != info.RowBytes(elements))
            throw new ArgumentException($"{Type}: {bytes} bytes for {elements} elements, {info.RowBytes(elements)} expected");
    }

    /// <summary>The signed value of largest magnitude (the first one on ties), as ggml's quantizers scan
    /// (legacy d, the k-quants' sub-block and super-block scales).</summary>
    internal static float SignedAbsMax(ReadOnlySpan<float> x)
    {
        float amax = 0, max = 0;
        foreach (float v in x)
            if (amax < MathF.Abs(v)) { amax = MathF.Abs(v); max = v; }
        return max;
    }

    /// <summary>fp32 → fp16 as ggml stores it (IEEE round to nearest even, like F16C's _cvtss_sh).</summary>
    protected static ushort ToHalf(float x) => BitConverter.HalfToUInt16Bits((Half)x);

    protected static float FromHalf(ReadOnlySpan<byte> two) => (float)BitConverter.UInt16BitsToHalf((ushort)(two[0] | two[1] << 8));

    protected static void WriteHalf(Span<byte> two, float x)
    {
        ushort h = ToHalf(x);
        two[0] = (byte)h;
        two[1] = (byte)(h >> 8);
    }
}
