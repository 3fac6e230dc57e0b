namespace DotQuant.Engine.Gguf;

/// <summary>ggml's tensor types, with the numbers GGUF files store (ggml.h; removed numbers are absent).</summary>
public enum GgmlType : uint
{
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
    Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
    IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23,
    I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
    TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
}

/// <summary>How a type lays out a row: <see cref="BlockSize"/> elements in <see cref="TypeSize"/>
/// bytes (ggml's type traits). A row's length must be a multiple of the block size.</summary>
public readonly record struct GgmlTypeInfo(GgmlType Type, int BlockSize, int TypeSize)
{
    public const int SuperBlock = 256;   // QK_K

    static readonly Dictionary<GgmlType, GgmlTypeInfo> Table = new[]
    {
        new GgmlTypeInfo(GgmlType.F32, 1, 4), new(GgmlType.F16, 1, 2), new(GgmlType.BF16, 1, 2), new(GgmlType.F64, 1, 8),
        new(GgmlType.I8, 1, 1), new(GgmlType.I16, 1, 2), new(GgmlType.I32, 1, 4), new(GgmlType.I64, 1, 8),
        new(GgmlType.Q4_0, 32, 18), new(GgmlType.Q4_1, 32, 20), new(GgmlType.Q5_0, 32, 22), new(GgmlType.Q5_1, 32, 24),
        new(GgmlType.Q8_0, 32, 34), new(GgmlType.Q8_1, 32, 36),
        new(GgmlType.Q2_K, 256, 84), new(GgmlType.Q3_K, 256, 110), new(GgmlType.Q4_K, 256, 144), new(GgmlType.Q5_K, 256, 176),
        new(GgmlType.Q6_K, 256, 210), new(GgmlType.Q8_K, 256, 292),
        new(GgmlType.IQ2_XXS, 256, 66), new(GgmlType.IQ2_XS, 256, 74), new(GgmlType.IQ3_XXS, 256, 98), new(GgmlType.IQ1_S, 256, 50),
        new(GgmlType.IQ4_NL, 32, 18), new(GgmlType.IQ3_S, 256, 110), new(GgmlType.IQ2_S, 256, 82), new(GgmlType.IQ4_XS, 256, 136),
        new(GgmlType.IQ1_M, 256, 56), new(GgmlType.TQ1_0, 256, 54), new(GgmlType.TQ2_0, 256, 66), new(GgmlType.MXFP4, 32, 17),
    }.ToDictionary(t => t.Type);

    public static bool TryGet(uint type, out GgmlTypeInfo info) => Table.TryGetValue((GgmlType)type, out info);

    public static GgmlTypeInfo Of(GgmlType type) => Table[type];

    /// <summary>Bytes of one row of <paramref name="rowLength"/> elements; the caller has checked divisibility.</summary>
    public long RowBytes(long rowLength) => rowLength / BlockSize * TypeSize;

    public double BitsPerWeight => TypeSize * 8.0 / BlockSize;

    public string Name => Type.ToString();
}
