namespace DotQuant.Engine.Formats;

/// <summary>Packs b-bit codes into int32 words as one little-endian bit stream per output channel
/// (or per group): value i occupies bits [i·b, (i+1)·b) of its stream. For b ∈ {2, 4, 8} this is the
/// GPTQ layout (32/b values per word, low bits first); for b = 3 it is exactly GPTQ's
/// 3-words-per-32-values layout (spec §7), since that layout is the same continuous stream. The tail
/// of each stream is zero-padded. The two public shapes differ only in how streams and words are
/// laid out in the int32 array.</summary>
public static class BitPacking
{
    public static int Words(long values, int bits) => checked((int)((values * bits + 31) / 32));

    /// <summary>codes[r, k] ([rows, count]) → words [Words(count), rows]: one stream per row, packed
    /// along k and stored column-wise (GPTQ's qweight).</summary>
    public static int[] PackColumns(byte[] codes, int rows, int count, int bits) =>
        Pack(codes, rows, count, bits, streamStride: 1, wordStride: rows);

    public static byte[] UnpackColumns(int[] packed, int rows, int count, int bits) =>
        Unpack(packed, rows, count, bits, streamStride: 1, wordStride: rows);

    /// <summary>values[g, r] ([groups, count]) → [groups, Words(count)]: one stream per group, packed
    /// along r and stored row-wise (GPTQ's qzeros).</summary>
    public static int[] PackRows(byte[] values, int groups, int count, int bits) =>
        Pack(values, groups, count, bits, streamStride: Words(count, bits), wordStride: 1);

    public static byte[] UnpackRows(int[] packed, int groups, int count, int bits) =>
        Unpack(packed, groups, count, bits, streamStride: Words(count, bits), wordStride: 1);

    /// <summary>Word w of stream s lives at s·streamStride + w·wordStride; values are [streams, count].</summary>
    static int[] Pack(byte[] values, int streams, int count, int bits, int streamStride, int wordStride)
    {
        var packed = new int[(long)streams * Words(count, bits)];
        for (int s = 0; s < streams; s++)
        {
            long bit = 0;
            for (int i = 0; i < count; i++, bit += bits)
            {
                uint v = values[(long)s * count + i];
                int w = (int)(bit >> 5), o = (int)(bit & 31);
                packed[(long)s * streamStride + (long)w * wordStride] |= unchecked((int)(v << o));
                if (o + bits > 32) packed[(long)s * streamStride + (long)(w + 1) * wordStride] |= (int)(v >> (32 - o));
            }
        }
        return packed;
    }

    static byte[] Unpack(int[] packed, int streams, int count, int bits, int streamStride, int wordStride)
    {
        var values = new byte[(long)streams * count];
        uint mask = (1u << bits) - 1;
        for (int s = 0; s < streams; s++)
        {
            long bit = 0;
            for (int i = 0; i < count; i++, bit += bits)
            {
                int w = (int)(bit >> 5), o = (int)(bit & 31);
                uint v = (uint)packed[(long)s * streamStride + (long)w * wordStride] >> o;
                if (o + bits > 32) v |= (uint)packed[(long)s * streamStride + (long)(w + 1) * wordStride] << (32 - o);
                values[(long)s * count + i] = (byte)(v & mask);
            }
        }
        return values;
    }
}
