namespace DotQuant.Engine.Gguf.Blocks;

/// <summary>The k-quants: super-blocks of 256 whose sub-block scales (and mins) are themselves quantized
/// against an fp16 super-block scale. Decoding follows ggml-quants.c's dequantize_row_*_K; encoding
/// (llama.cpp's iterative scale search) is not implemented here yet, so these read llama.cpp's files.</summary>
public abstract class KQuantCodec : BlockCodec
{
    protected const int QK = GgmlTypeInfo.SuperBlock;

    public override void Quantize(ReadOnlySpan<float> row, Span<byte> destination) =>
        throw new NotSupportedException($"{Type}: writing k-quant blocks is not implemented yet (reading is)");

    public override void Dequantize(ReadOnlySpan<byte> source, Span<float> row)
    {
        CheckLengths(row.Length, source.Length);
        int size = Info.TypeSize;
        for (int b = 0; b < row.Length / QK; b++)
            DequantizeBlock(source.Slice(b * size, size), row.Slice(b * QK, QK));
    }

    protected abstract void DequantizeBlock(ReadOnlySpan<byte> block, Span<float> y);

    /// <summary>The 6-bit scale and min of sub-block j packed in 12 bytes (get_scale_min_k4).</summary>
    protected static (int Scale, int Min) ScaleMin(ReadOnlySpan<byte> q, int j) => j < 4
        ? (q[j] & 63, q[j + 4] & 63)
        : ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4));
}

/// <summary>Q2_K: scales[16] (4-bit scale | 4-bit min), qs[64], d, dmin; x = d·sc·q − dmin·m.</summary>
public sealed class Q2_KCodec : KQuantCodec
{
    public override GgmlType Type => GgmlType.Q2_K;

    protected override void DequantizeBlock(ReadOnlySpan<byte> block, Span<float> y)
    {
        var scales = block[..16];
        var q = block.Slice(16, 64);
        float d = FromHalf(block[80..]), min = FromHalf(block[82..]);
        int at = 0, s = 0;
        for (int n = 0; n < QK; n += 128)
        {
            for (int shift = 0; shift < 8; shift += 2)
                for (int half = 0; half < 2; half++)
                {
                    int sc = scales[s++];
                    float dl = d * (sc & 0xF), ml = min * (sc >> 4);
                    for (int l = 0; l < 16; l++) y[at++] = dl * ((q[l + 16 * half] >> shift) & 3) - ml;
                }
            q = q[32..];
        }
    }
}

/// <summary>Q3_K: hmask[32], qs[64], scales[12] (6-bit, offset 32), d; x = d·(sc − 32)·(q − 4·!high).</summary>
public sealed class Q3_KCodec : KQuantCodec
{
    public override GgmlType Type => GgmlType.Q3_K;

    protected override void DequantizeBlock(ReadOnlySpan<byte> block, Span<float> y)
    {
        var hm = block[..32];
        var q = block.Slice(32, 64);
        var packed = block.Slice(96, 12);
        float dAll = FromHalf(block[108..]);
        Span<int> scales = stackalloc int[16];
        for (int j = 0; j < 16; j++)
        {
            int low = j < 8 ? packed[j] & 0xF : packed[j - 8] >> 4;
            int high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
            scales[j] = (low | high << 4) - 32;
        }
        int at = 0, s = 0, m = 1;
        for (int n = 0; n < QK; n += 128)
        {
            for (int shift = 0; shift < 8; shift += 2)
            {
                for (int half = 0; half < 2; half++)
                {
                    float dl = dAll * scales[s++];
                    for (int l = 0; l < 16; l++)
                    {
                        int i = l + 16 * half;
                        y[at++] = dl * (((q[i] >> shift) & 3) - ((hm[i] & m) != 0 ? 0 : 4));
                    }
                }
                m <<= 1;
            }
            q = q[32..];
        }
    }
}

/// <summary>Q4_K: d, dmin, scales[12] (6-bit scales and mins), qs[128]; x = d·sc·q − dmin·m.</summary>
public sealed class Q4_KCodec : KQuantCodec
{
    public override GgmlType Type => GgmlType.Q4_K;

    protected override void DequantizeBlock(ReadOnlySpan<byte> block, Span<float> y)
    {
        float d = FromHalf(block), min = FromHalf(block[2..]);
        var scales = block.Slice(4, 12);
        var q = block.Slice(16, 128);
        int at = 0, s = 0;
        for (int j = 0; j < QK; j += 64)
        {
            var (sc1, m1) = ScaleMin(scales, s);
            var (sc2, m2) = ScaleMin(scales, s + 1);
            float d1 = d * sc1, min1 = min * m1, d2 = d * sc2, min2 = min * m2;
            for (int l = 0; l < 32; l++) y[at++] = d1 * (q[l] & 0xF) - min1;
            for (int l = 0; l < 32; l++) y[at++] = d2 * (q[l] >> 4) - min2;
            q = q[32..];
            s += 2;
        }
    }
}

/// <summary>Q5_K: d, dmin, scales[12], qh[32], qs[128]; as Q4_K with a fifth bit per weight.</summary>
public sealed class Q5_KCodec : KQuantCodec
{
    public override GgmlType Type => GgmlType.Q5_K;

    protected override void DequantizeBlock(ReadOnlySpan<byte> block, Span<float> y)
    {
        float d = FromHalf(block), min = FromHalf(block[2..]);
        var scales = block.Slice(4, 12);
        var qh = block.Slice(16, 32);
        var ql = block.Slice(48, 128);
        int at = 0, s = 0, u1 = 1, u2 = 2;
        for (int j = 0; j < QK; j += 64)
        {
            var (sc1, m1) = ScaleMin(scales, s);
            var (sc2, m2) = ScaleMin(scales, s + 1);
            float d1 = d * sc1, min1 = min * m1, d2 = d * sc2, min2 = min * m2;
            for (int l = 0; l < 32; l++) y[at++] = d1 * ((ql[l] & 0xF) + ((qh[l] & u1) != 0 ? 16 : 0)) - min1;
            for (int l = 0; l < 32; l++) y[at++] = d2 * ((ql[l] >> 4) + ((qh[l] & u2) != 0 ? 16 : 0)) - min2;
            ql = ql[32..];
            s += 2;
            u1 <<= 2;
            u2 <<= 2;
        }
    }
}

/// <summary>Q6_K: ql[128], qh[64], scales[16] (int8), d; x = d·sc·(q − 32).</summary>
public sealed class Q6_KCodec : KQuantCodec
{
    public override GgmlType Type => GgmlType.Q6_K;

    protected override void DequantizeBlock(ReadOnlySpan<byte> block, Span<float> y)
    {
        var ql = block[..128];
        var qh = block.Slice(128, 64);
        var sc = block.Slice(192, 16);
        float d = FromHalf(block[208..]);
        int at = 0;
        for (int n = 0; n < QK; n += 128)
        {
            for (int l = 0; l < 32; l++)
            {
                int s = l / 16;
                int q1 = ((ql[l] & 0xF) | ((qh[l] >> 0) & 3) << 4) - 32;
                int q2 = ((ql[l + 32] & 0xF) | ((qh[l] >> 2) & 3) << 4) - 32;
                int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
                int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
                y[at + l] = d * (sbyte)sc[s] * q1;
                y[at + l + 32] = d * (sbyte)sc[s + 2] * q2;
                y[at + l + 64] = d * (sbyte)sc[s + 4] * q3;
                y[at + l + 96] = d * (sbyte)sc[s + 6] * q4;
            }
            at += 128;
            ql = ql[64..];
            qh = qh[32..];
            sc = sc[8..];
        }
    }
}
