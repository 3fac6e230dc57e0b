namespace DotQuant.Engine.Formats;

/// <summary>Packs b-bit codes into int32 words as one little-endian bit stream per column: value i
/// occupies bits [i·b, (i+1)·b) of the stream. For b ∈ {2, 4, 8} this is the GPTQ layout
/// (32/b values per word, low bits first); for b = 3 it is exactly GPTQ's 3-words-per-32-values
/// layout (spec §7), since that layout is the same continuous stream. The tail is zero-padded.</summary>
public static class BitPacking
{
    public static int Words(long values, int bits) => checked((int)((values * bits + 31) / 32));

    /// <summary>codes[r, k] (row-major [rows, count]) → words [Words(count), rows], packing along k.</summary>
    public static int[] PackColumns(byte[] codes, int rows, int count, int bits)
    {
        int words = Words(count, bits);
        var packed = new int[words * rows];
        for (int r = 0; r < rows; r++)
        {
            long bit = 0;
            for (int k = 0; k < count; k++, bit += bits)
            {
                uint v = codes[(long)r * count + k];
                int w = (int)(bit >> 5), o = (int)(bit & 31);
                packed[(long)w * rows + r] |= unchecked((int)(v << o));
                if (o + bits > 32) packed[(long)(w + 1) * rows + r] |= (int)(v >> (32 - o));
            }
        }
        return packed;
    }

    /// <summary>Inverse of <see cref="PackColumns"/>: words [Words(count), rows] → codes [rows, count].</summary>
    public static byte[] UnpackColumns(int[] packed, int rows, int count, int bits)
    {
        var codes = new byte[(long)rows * count];
        uint mask = (1u << bits) - 1;
        for (int r = 0; r < rows; r++)
        {
            long bit = 0;
            for (int k = 0; k < count; k++, bit += bits)
            {
                int w = (int)(bit >> 5), o = (int)(bit & 31);
                uint v = (uint)packed[(long)w * rows + r] >> o;
                if (o + bits > 32) v |= (uint)packed[(long)(w + 1) * rows + r] << (32 - o);
                codes[(long)r * count + k] = (byte)(v & mask);
            }
        }
        return codes;
    }

    /// <summary>values[g, r] ([groups, count] row-major) → [groups, Words(count)], packing along r
    /// (GPTQ's qzeros layout).</summary>
    public static int[] PackRows(byte[] values, int groups, int count, int bits)
    {
        int words = Words(count, bits);
        var packed = new int[groups * words];
        for (int g = 0; g < groups; g++)
        {
            long bit = 0;
            for (int r = 0; r < count; r++, bit += bits)
            {
                uint v = values[(long)g * count + r];
                int w = (int)(bit >> 5), o = (int)(bit & 31);
                packed[(long)g * words + w] |= unchecked((int)(v << o));
                if (o + bits > 32) packed[(long)g * words + w + 1] |= (int)(v >> (32 - o));
            }
        }
        return packed;
    }

    public static byte[] UnpackRows(int[] packed, int groups, int count, int bits)
    {
        int words = Words(count, bits);
        var values = new byte[(long)groups * count];
        uint mask = (1u << bits) - 1;
        for (int g = 0; g < groups; g++)
        {
            long bit = 0;
            for (int r = 0; r < count; r++, bit += bits)
            {
                int w = (int)(bit >> 5), o = (int)(bit & 31);
                uint v = (uint)packed[(long)g * words + w] >> o;
                if (o + bits > 32) v |= (uint)packed[(long)g * words + w + 1] << (32 - o);
                values[(long)g * count + r] = (byte)(v & mask);
            }
        }
        return values;
    }
}
