using DotQuant.Engine.Quantizers;
using static TorchSharp.torch;

namespace DotQuant.Engine.Onnx;

/// <summary>One linear in ONNX Runtime's <c>com.microsoft.MatMulNBits</c> layout: B uint8
/// [N, k_blocks, block·bits/8] with codes packed along K (element 2i in the low nibble at 4 bits), scales
/// fp32 [N·k_blocks], zero points uint8 packed the same way along the blocks of a row; the last block of a
/// row is zero-padded. Dequantized, a weight is (code − zero)·scale, our grid's value exactly. A group of
/// g columns is g/block consecutive MatMulNBits blocks carrying the same scale and zero (so any group
/// size that is a multiple of 16 is stored exactly; a per-channel grid repeats over blocks of up to 128).</summary>
internal sealed record NBitsWeight(int Bits, int BlockSize, long N, long K, byte[] Codes, float[] Scales, byte[] Zeros)
{
    public long Blocks => (K + BlockSize - 1) / BlockSize;
    public int BlobBytes => BlockSize * Bits / 8;
    public long ZeroBytesPerRow => (Blocks * Bits + 7) / 8;

    /// <summary>The MatMulNBits block for groups of <paramref name="groupSize"/> columns in rows of
    /// <paramref name="k"/>: the largest power of two ≤ 128 that divides the group size (groups of
    /// 32/64/128 are one block each). A row that is one group (per-channel, or a group wider than the
    /// row) takes the smallest power of two from 16 that covers it, at most 128, so a short row is not
    /// padded to 128.</summary>
    public static int BlockFor(int groupSize, long k)
    {
        if (groupSize <= 0 || groupSize >= k)
        {
            int b = 16;
            while (b < k && b < 128) b *= 2;
            return b;
        }
        for (int b = 128; b >= 16; b /= 2)
            if (groupSize % b == 0) return b;
        throw new ArgumentException($"group size {groupSize} is not a multiple of 16 (MatMulNBits blocks are powers of two from 16)");
    }

    /// <summary>The grid of a solved linear in MatMulNBits layout; groups must be consecutive columns
    /// (no act-order g_idx: the manifest asks for static groups).</summary>
    public static NBitsWeight From(QuantizedLinear q)
    {
        if (q.Bits is not (4 or 8)) throw new ArgumentException($"MatMulNBits stores 4 or 8 bits, not {q.Bits}");
        int bits = q.Bits, block = BlockFor(q.GroupSize, q.InFeatures);
        long n = q.OutFeatures, k = q.InFeatures;
        int group = q.GroupSize <= 0 ? (int)k : q.GroupSize;
        var gIdx = q.GIdx.to(ScalarType.Int32).data<int>().ToArray();
        for (long c = 0; c < k; c++)
            if (gIdx[c] != c / group) throw new ArgumentException($"column {c} is in group {gIdx[c]}, not {c / group}: MatMulNBits needs consecutive groups (act order with static groups)");
        var codes = q.Codes.data<byte>().ToArray();                                  // [N, K]
        using var scalesT = q.Scales.to(ScalarType.Float32).t().contiguous();         // [N, G]
        using var zerosT = q.Zeros.to(ScalarType.Int32).t().contiguous();
        var scales = scalesT.data<float>().ToArray();
        var zeros = zerosT.data<int>().ToArray();
        int groups = (int)q.Scales.shape[0], maxq = (1 << bits) - 1;
        var w = new NBitsWeight(bits, block, n, k, [], [], []);
        long blocks = w.Blocks;
        var packed = new byte[n * blocks * w.BlobBytes];
        var blockScales = new float[n * blocks];
        var blockZeros = new byte[n * w.ZeroBytesPerRow];
        for (long r = 0; r < n; r++)
        {
            for (long c = 0; c < k; c++)
                Put(packed, r * blocks * w.BlobBytes, c, codes[r * k + c], bits);
            for (long b = 0; b < blocks; b++)
            {
                long g = b * block / group;
                int z = zeros[r * groups + g];
                if (z < 0 || z > maxq) throw new ArgumentException($"row {r} group {g}: zero point {z} is outside the {bits}-bit range");
                blockScales[r * blocks + b] = scales[r * groups + g];
                Put(blockZeros, r * w.ZeroBytesPerRow, b, (byte)z, bits);
            }
        }
        return w with { Codes = packed, Scales = blockScales, Zeros = blockZeros };
    }

    /// <summary>Element <paramref name="index"/> of a packed run starting at <paramref name="start"/>.</summary>
    static void Put(byte[] packed, long start, long index, byte value, int bits)
    {
        if (bits == 8) { packed[start + index] = value; return; }
        long at = start + index / 2;
        packed[at] = (byte)(index % 2 == 0 ? (packed[at] & 0xF0) | value : (packed[at] & 0x0F) | (value << 4));
    }

    static int Get(byte[] packed, long start, long index, int bits) =>
        bits == 8 ? packed[start + index] : index % 2 == 0 ? packed[start + index / 2] & 0x0F : packed[start + index / 2] >> 4;

    /// <summary>The fp32 weight [N, K] MatMulNBits computes with: (code − zero)·scale per block.</summary>
    public Tensor Dequantize()
    {
        var w = new float[N * K];
        long blocks = Blocks;
        for (long r = 0; r < N; r++)
            for (long c = 0; c < K; c++)
            {
                long b = c / BlockSize;
                float code = Get(Codes, r * blocks * BlobBytes, c, Bits), zero = Get(Zeros, r * ZeroBytesPerRow, b, Bits);
                w[r * K + c] = (code - zero) * Scales[r * blocks + b];
            }
        return tensor(w, [N, K]);
    }
}
