namespace DotQuant.Engine.Gguf.Blocks;

/// <summary>The 32-element formats. Symmetric ones (Q4_0, Q5_0, Q8_0) store d and decode q·d (with an
/// offset); affine ones (Q4_1, Q5_1) store d and a free minimum m and decode q·d + m. Each block holds
/// the low nibbles of elements j and j + 16 in byte j, and (5-bit types) the fifth bits in a 32-bit qh.</summary>
public abstract class LegacyCodec : BlockCodec
{
    protected const int QK = 32;

    /// <summary>Codes of one block and its stored parameters (d, and m for affine types) as llama.cpp picks them.</summary>
    protected abstract void QuantizeBlock(ReadOnlySpan<float> x, Span<byte> codes, out float d, out float m);

    protected abstract void WriteBlock(ReadOnlySpan<byte> codes, float d, float m, Span<byte> block);

    /// <summary>One block from its 32 codes (as stored: unsigned nibbles, Q8_0's signed bytes) and its
    /// d and m; d and m must already be fp16 values (a solver's grid), so nothing is rounded twice.</summary>
    public void EncodeBlock(ReadOnlySpan<byte> codes, float d, float m, Span<byte> block) => WriteBlock(codes, d, m, block);

    protected abstract void DequantizeBlock(ReadOnlySpan<byte> block, Span<float> x);

    public override void Quantize(ReadOnlySpan<float> row, Span<byte> destination)
    {
        CheckLengths(row.Length, destination.Length);
        Span<byte> codes = stackalloc byte[QK];
        int size = Info.TypeSize;
        for (int b = 0; b < row.Length / QK; b++)
        {
            QuantizeBlock(row.Slice(b * QK, QK), codes, out float d, out float m);
            WriteBlock(codes, d, m, destination.Slice(b * size, size));
        }
    }

    public override void Dequantize(ReadOnlySpan<byte> source, Span<float> row)
    {
        CheckLengths(row.Length, source.Length);
        int size = Info.TypeSize;
        for (int b = 0; b < row.Length / QK; b++)
            DequantizeBlock(source.Slice(b * size, size), row.Slice(b * QK, QK));
    }

    /// <summary>The block's codes and stored d and m from llama.cpp's weighted search (the codes are the
    /// search's own: the reference does not recode against the fp16 scale).</summary>
    protected virtual void QuantizeBlock(ReadOnlySpan<float> x, ReadOnlySpan<float> weights, Span<byte> codes, out float d, out float m) =>
        throw new NotSupportedException($"{Type} has no importance-weighted quantizer");

    public override bool UsesImportance => true;

    /// <summary>quantize_row_*_impl: ω_j = imp_j·√(σ² + x_j²) with σ² the mean square of the whole row.</summary>
    public override void Quantize(ReadOnlySpan<float> row, Span<byte> destination, ReadOnlySpan<float> importance)
    {
        if (importance.IsEmpty || !UsesImportance)
        {
            Quantize(row, destination);
            return;
        }
        CheckLengths(row.Length, destination.Length);
        if (importance.Length != row.Length) throw new ArgumentException($"{Type}: {importance.Length} importance values for a row of {row.Length}");
        float sumX2 = 0;
        for (int j = 0; j < row.Length; j++) sumX2 += row[j] * row[j];
        float sigma2 = sumX2 / row.Length;
        Span<float> weights = stackalloc float[QK];
        Span<byte> codes = stackalloc byte[QK];
        int size = Info.TypeSize;
        for (int b = 0; b < row.Length / QK; b++)
        {
            var x = row.Slice(b * QK, QK);
            KQuantSearch.ImportanceWeights(x, importance.Slice(b * QK, QK), sigma2, weights);
            QuantizeBlock(x, weights, codes, out float d, out float m);
            WriteBlock(codes, d, m, destination.Slice(b * size, size));
        }
    }

    protected static (float Min, float Max) Range(ReadOnlySpan<float> x)
    {
        float min = float.MaxValue, max = -float.MaxValue;
        foreach (float v in x)
        {
            if (v < min) min = v;
            if (v > max) max = v;
        }
        return (min, max);
    }

    protected static void PackNibbles(ReadOnlySpan<byte> codes, Span<byte> qs)
    {
        for (int j = 0; j < QK / 2; j++) qs[j] = (byte)((codes[j] & 0x0F) | (codes[j + QK / 2] & 0x0F) << 4);
    }

    protected static uint HighBits(ReadOnlySpan<byte> codes)
    {
        uint qh = 0;
        for (int j = 0; j < QK; j++) qh |= (uint)((codes[j] & 0x10) >> 4) << j;
        return qh;
    }

    protected static int Code(ReadOnlySpan<byte> qs, uint qh, int j)
    {
        int half = j < QK / 2 ? qs[j] & 0x0F : qs[j - QK / 2] >> 4;
        return half | (int)((qh >> j) & 1) << 4;
    }

    protected static uint ReadU32(ReadOnlySpan<byte> b) => (uint)(b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24);

    protected static void WriteU32(Span<byte> b, uint v)
    {
        b[0] = (byte)v; b[1] = (byte)(v >> 8); b[2] = (byte)(v >> 16); b[3] = (byte)(v >> 24);
    }
}

/// <summary>Q4_0: x = d·(q − 8), d = max/−8 where max is the signed value of largest magnitude.</summary>
public sealed class Q4_0Codec : LegacyCodec
{
    public override GgmlType Type => GgmlType.Q4_0;

    protected override void QuantizeBlock(ReadOnlySpan<float> x, Span<byte> codes, out float d, out float m)
    {
        d = SignedAbsMax(x) / -8;
        float id = d != 0 ? 1.0f / d : 0.0f;
        for (int j = 0; j < QK; j++) codes[j] = (byte)Math.Min(15, (int)(sbyte)(x[j] * id + 8.5f));
        m = 0;
    }

    protected override void QuantizeBlock(ReadOnlySpan<float> x, ReadOnlySpan<float> weights, Span<byte> codes, out float d, out float m)
    {
        d = KQuantSearch.Qx(x, 8, codes, weights);
        m = 0;
    }

    protected override void WriteBlock(ReadOnlySpan<byte> codes, float d, float m, Span<byte> block)
    {
        WriteHalf(block, d);
        PackNibbles(codes, block[2..]);
    }

    protected override void DequantizeBlock(ReadOnlySpan<byte> block, Span<float> x)
    {
        float d = FromHalf(block);
        var qs = block[2..];
        for (int j = 0; j < QK; j++) x[j] = (Code(qs, 0, j) - 8) * d;
    }
}

/// <summary>Q4_1: x = d·q + m with d = (max − min)/15 and m = min, both fp16.</summary>
public sealed class Q4_1Codec : LegacyCodec
{
    public override GgmlType Type => GgmlType.Q4_1;

    protected override void QuantizeBlock(ReadOnlySpan<float> x, Span<byte> codes, out float d, out float m)
    {
        var (min, max) = Range(x);
        d = (max - min) / 15;
        float id = d != 0 ? 1.0f / d : 0.0f;
        for (int j = 0; j < QK; j++) codes[j] = (byte)Math.Min(15, (int)(sbyte)((x[j] - min) * id + 0.5f));
        m = min;
    }

    protected override void QuantizeBlock(ReadOnlySpan<float> x, ReadOnlySpan<float> weights, Span<byte> codes, out float d, out float m)
    {
        d = KQuantSearch.Qkx2(x, weights, 15, codes, out float min, -0.9f, 0.05f, 36, false);
        m = -min;
    }

    protected override void WriteBlock(ReadOnlySpan<byte> codes, float d, float m, Span<byte> block)
    {
        WriteHalf(block, d);
        WriteHalf(block[2..], m);
        PackNibbles(codes, block[4..]);
    }

    protected override void DequantizeBlock(ReadOnlySpan<byte> block, Span<float> x)
    {
        float d = FromHalf(block), m = FromHalf(block[2..]);
        var qs = block[4..];
        for (int j = 0; j < QK; j++) x[j] = Code(qs, 0, j) * d + m;
    }
}

/// <summary>Q5_0: x = d·(q − 16), d = max/−16.</summary>
public sealed class Q5_0Codec : LegacyCodec
{
    public override GgmlType Type => GgmlType.Q5_0;

    protected override void QuantizeBlock(ReadOnlySpan<float> x, Span<byte> codes, out float d, out float m)
    {
        d = SignedAbsMax(x) / -16;
        float id = d != 0 ? 1.0f / d : 0.0f;
        for (int j = 0; j < QK; j++) codes[j] = (byte)Math.Min(31, (int)(sbyte)(x[j] * id + 16.5f));
        m = 0;
    }

    protected override void QuantizeBlock(ReadOnlySpan<float> x, ReadOnlySpan<float> weights, Span<byte> codes, out float d, out float m)
    {
        d = KQuantSearch.Qx(x, 16, codes, weights);
        m = 0;
    }

    protected override void WriteBlock(ReadOnlySpan<byte> codes, float d, float m, Span<byte> block)
    {
        WriteHalf(block, d);
        WriteU32(block[2..], HighBits(codes));
        PackNibbles(codes, block[6..]);
    }

    protected override void DequantizeBlock(ReadOnlySpan<byte> block, Span<float> x)
    {
        float d = FromHalf(block);
        uint qh = ReadU32(block[2..]);
        var qs = block[6..];
        for (int j = 0; j < QK; j++) x[j] = (Code(qs, qh, j) - 16) * d;
    }
}

/// <summary>Q5_1: x = d·q + m with d = (max − min)/31 and m = min.</summary>
public sealed class Q5_1Codec : LegacyCodec
{
    public override GgmlType Type => GgmlType.Q5_1;

    protected override void QuantizeBlock(ReadOnlySpan<float> x, Span<byte> codes, out float d, out float m)
    {
        var (min, max) = Range(x);
        d = (max - min) / 31;
        float id = d != 0 ? 1.0f / d : 0.0f;
        // The reference does not clamp here: (max − min)·id rounds to at most 31.
        for (int j = 0; j < QK; j++) codes[j] = (byte)((x[j] - min) * id + 0.5f);
        m = min;
    }

    protected override void QuantizeBlock(ReadOnlySpan<float> x, ReadOnlySpan<float> weights, Span<byte> codes, out float d, out float m)
    {
        d = KQuantSearch.Qkx2(x, weights, 31, codes, out float min, -0.9f, 0.05f, 36, false);
        m = -min;
    }

    protected override void WriteBlock(ReadOnlySpan<byte> codes, float d, float m, Span<byte> block)
    {
        WriteHalf(block, d);
        WriteHalf(block[2..], m);
        WriteU32(block[4..], HighBits(codes));
        PackNibbles(codes, block[8..]);
    }

    protected override void DequantizeBlock(ReadOnlySpan<byte> block, Span<float> x)
    {
        float d = FromHalf(block), m = FromHalf(block[2..]);
        uint qh = ReadU32(block[4..]);
        var qs = block[8..];
        for (int j = 0; j < QK; j++) x[j] = Code(qs, qh, j) * d + m;
    }
}

/// <summary>Q8_0: x = d·q with q a signed byte, d = absmax/127, q = round half away from zero.</summary>
public sealed class Q8_0Codec : LegacyCodec
{
    public override GgmlType Type => GgmlType.Q8_0;

    /// <summary>quantize_q8_0 ignores quant_weights.</summary>
    public override bool UsesImportance => false;

    protected override void QuantizeBlock(ReadOnlySpan<float> x, Span<byte> codes, out float d, out float m)
    {
        float amax = 0;
        foreach (float v in x) amax = MathF.Max(amax, MathF.Abs(v));
        d = amax / 127;
        float id = d != 0 ? 1.0f / d : 0.0f;
        for (int j = 0; j < QK; j++) codes[j] = (byte)(sbyte)MathF.Round(x[j] * id, MidpointRounding.AwayFromZero);
        m = 0;
    }

    protected override void WriteBlock(ReadOnlySpan<byte> codes, float d, float m, Span<byte> block)
    {
        WriteHalf(block, d);
        codes.CopyTo(block[2..]);
    }

    protected override void DequantizeBlock(ReadOnlySpan<byte> block, Span<float> x)
    {
        float d = FromHalf(block);
        for (int j = 0; j < QK; j++) x[j] = (sbyte)block[2 + j] * d;
    }
}
