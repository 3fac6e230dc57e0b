namespace DotQuant.Engine.Gguf.Blocks;

/// <summary>The k-quants: super-blocks of 256 whose sub-block scales (and mins) are themselves quantized
/// against an fp16 super-block scale. Decoding follows ggml-quants.c's dequantize_row_*_K. Encoding is
/// split the way a solver needs it: <see cref="Search"/> is llama.cpp's scale search for one super-block
/// (its header: the packed sub-block scales and the fp16 super-block scales, plus first codes),
/// <see cref="SubScales"/> what each sub-block's stored scale and min decode to, <see cref="Code"/> the
/// reference's recoding of a value against them, <see cref="Pack"/> the block bytes. Quantize = all four,
/// which is quantize_row_*_K_ref.</summary>
public abstract class KQuantCodec : BlockCodec
{
    protected const int QK = GgmlTypeInfo.SuperBlock;

    /// <summary>Elements per sub-block (each has its own scale).</summary>
    public abstract int SubBlock { get; }
    public abstract int MaxCode { get; }
    /// <summary>Symmetric types store q + Offset (value d·(code − Offset)); affine ones have Offset 0 and a min.</summary>
    public abstract int Offset { get; }
    /// <summary>Bytes of the non-code part of a block (in our canonical order, see each type).</summary>
    public abstract int HeaderBytes { get; }
    public int SubBlocks => QK / SubBlock;

    /// <summary>llama.cpp's scale search for one super-block x[256]: the header, and codes (the search's,
    /// kept as stored where a sub-block's scale quantizes to zero).</summary>
    public abstract void Search(ReadOnlySpan<float> x, Span<byte> header, Span<byte> codes);

    /// <summary>Each sub-block's scale d and min m as the decoder forms them: value = d·(code − Offset) − m.</summary>
    public abstract void SubScales(ReadOnlySpan<byte> header, Span<float> d, Span<float> m);

    /// <summary>One super-block's bytes from its header and 256 codes.</summary>
    public abstract void Pack(ReadOnlySpan<byte> header, ReadOnlySpan<byte> codes, Span<byte> block);

    /// <summary>The reference's final coding of x against a stored sub-block scale (d ≠ 0).</summary>
    public byte Code(float x, float d, float m) => Offset == 0
        ? (byte)Math.Clamp(KQuantSearch.NearestInt((x + m) / d), 0, MaxCode)
        : (byte)(Math.Clamp(KQuantSearch.NearestInt(x / d), -Offset, MaxCode - Offset) + Offset);

    /// <summary>llama.cpp's importance-weighted search for one super-block (quantize_row_*_K_impl with
    /// quant_weights): <paramref name="importance"/> holds imp_j of its 256 columns.</summary>
    public abstract void Search(ReadOnlySpan<float> x, ReadOnlySpan<float> importance, Span<byte> header, Span<byte> codes);

    public override bool UsesImportance => true;

    public override void Quantize(ReadOnlySpan<float> row, Span<byte> destination) => Quantize(row, destination, default);

    public override void Quantize(ReadOnlySpan<float> row, Span<byte> destination, ReadOnlySpan<float> importance)
    {
        CheckLengths(row.Length, destination.Length);
        if (!importance.IsEmpty && importance.Length != row.Length)
            throw new ArgumentException($"{Type}: {importance.Length} importance values for a row of {row.Length}");
        Span<byte> header = stackalloc byte[HeaderBytes];
        Span<byte> codes = stackalloc byte[QK];
        Span<float> d = stackalloc float[SubBlocks], m = stackalloc float[SubBlocks];
        int size = Info.TypeSize;
        for (int b = 0; b < row.Length / QK; b++)
        {
            var x = row.Slice(b * QK, QK);
            if (importance.IsEmpty) Search(x, header, codes);
            else Search(x, importance.Slice(b * QK, QK), header, codes);
            SubScales(header, d, m);
            for (int j = 0; j < SubBlocks; j++)
            {
                if (d[j] == 0) continue;
                for (int i = j * SubBlock; i < (j + 1) * SubBlock; i++) codes[i] = Code(x[i], d[j], m[j]);
            }
            Pack(header, codes, destination.Slice(b * size, size));
        }
    }

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

    /// <summary>Four 2-bit codes per byte: byte l of each 128-element half holds elements l, l+32, l+64, l+96.</summary>
    protected static void PackCrumbs(ReadOnlySpan<byte> codes, Span<byte> qs)
    {
        for (int j = 0; j < QK; j += 128)
            for (int l = 0; l < 32; l++)
                qs[j / 4 + l] = (byte)((codes[j + l] & 3) | (codes[j + l + 32] & 3) << 2 | (codes[j + l + 64] & 3) << 4 | (codes[j + l + 96] & 3) << 6);
    }

    /// <summary>Q4_K/Q5_K: the 6-bit scales and mins of the eight sub-blocks, packed in 12 bytes.</summary>
    protected static void PackScaleMins(ReadOnlySpan<byte> ls, ReadOnlySpan<byte> lm, Span<byte> scales)
    {
        scales[..12].Clear();
        for (int j = 0; j < 8; j++)
        {
            if (j < 4)
            {
                scales[j] = ls[j];
                scales[j + 4] = lm[j];
            }
            else
            {
                scales[j + 4] = (byte)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
                scales[j - 4] |= (byte)((ls[j] >> 4) << 6);
                scales[j] |= (byte)((lm[j] >> 4) << 6);
            }
        }
    }

    /// <summary>Q4_K/Q5_K's search: weighted affine fits per sub-block of 32, scales and mins to 6 bits.</summary>
    protected static void SearchScaleMins(ReadOnlySpan<float> x, Span<byte> header, Span<byte> codes, int nmax, float rmin, float rdelta, int nstep)
    {
        Span<float> weights = stackalloc float[32], scales = stackalloc float[8], mins = stackalloc float[8];
        float maxScale = 0, maxMin = 0;
        for (int j = 0; j < 8; j++)
        {
            var xs = x.Slice(32 * j, 32);
            float sumX2 = 0;
            for (int l = 0; l < 32; l++) sumX2 += xs[l] * xs[l];
            float avX = MathF.Sqrt(sumX2 / 32);
            for (int l = 0; l < 32; l++) weights[l] = avX + MathF.Abs(xs[l]);
            scales[j] = KQuantSearch.Qkx2(xs, weights, nmax, codes.Slice(32 * j, 32), out mins[j], rmin, rdelta, nstep, false);
            if (scales[j] > maxScale) maxScale = scales[j];
            if (mins[j] > maxMin) maxMin = mins[j];
        }
        float invScale = maxScale > 0 ? 63f / maxScale : 0f;
        float invMin = maxMin > 0 ? 63f / maxMin : 0f;
        Span<byte> ls = stackalloc byte[8], lm = stackalloc byte[8];
        for (int j = 0; j < 8; j++)
        {
            ls[j] = Math.Min((byte)63, unchecked((byte)KQuantSearch.NearestInt(invScale * scales[j])));
            lm[j] = Math.Min((byte)63, unchecked((byte)KQuantSearch.NearestInt(invMin * mins[j])));
        }
        WriteHalf(header, maxScale / 63f);
        WriteHalf(header[2..], maxMin / 63f);
        PackScaleMins(ls, lm, header.Slice(4, 12));
    }

    /// <summary>Q4_K/Q5_K's weighted search (quantize_row_q4_K_impl / q5_K_impl): affine fits per sub-block
    /// of 32 with ω = imp·√(σ² + x²), σ² = 2·mean(x²) over the super-block, then the sub-block scales and
    /// mins quantized to 6 bits with the summed weights (make_qp_quants).</summary>
    protected static void SearchScaleMins(ReadOnlySpan<float> x, ReadOnlySpan<float> importance, Span<byte> header, Span<byte> codes, int nmax)
    {
        Span<float> weights = stackalloc float[QK], scales = stackalloc float[8], mins = stackalloc float[8], sw = stackalloc float[8];
        KQuantSearch.SuperBlockWeights(x, importance, 2, 32, weights, sw);
        for (int j = 0; j < 8; j++)
            scales[j] = KQuantSearch.Qkx2(x.Slice(32 * j, 32), weights.Slice(32 * j, 32), nmax, codes.Slice(32 * j, 32), out mins[j], -0.9f, 0.05f, 36, false);
        Span<byte> ls = stackalloc byte[8], lm = stackalloc byte[8];
        float dBlock = KQuantSearch.Qp(scales, 63, ls, sw);
        float mBlock = KQuantSearch.Qp(mins, 63, lm, sw);
        // Q5_K's impl clamps the codes to 63, Q4_K's does not; Qp never returns more than nmax = 63, so both agree.
        PackScaleMins(ls, lm, header.Slice(4, 12));
        WriteHalf(header, dBlock);
        WriteHalf(header[2..], mBlock);
    }

    /// <summary>Q4_K/Q5_K header [d, dmin, scales[12]]: d·sc and dmin·m per sub-block of 32.</summary>
    protected static void ScaleMinSubScales(ReadOnlySpan<byte> header, Span<float> d, Span<float> m)
    {
        float dd = FromHalf(header), dm = FromHalf(header[2..]);
        for (int j = 0; j < 8; j++)
        {
            var (sc, mn) = ScaleMin(header.Slice(4, 12), j);
            d[j] = dd * sc;
            m[j] = dm * mn;
        }
    }
}

/// <summary>Q2_K: scales[16] (4-bit scale | 4-bit min), qs[64], d, dmin; x = d·sc·q − dmin·m.</summary>
public sealed class Q2_KCodec : KQuantCodec
{
    public override GgmlType Type => GgmlType.Q2_K;

    public override int SubBlock => 16;
    public override int MaxCode => 3;
    public override int Offset => 0;
    /// <summary>[scales[16], d, dmin].</summary>
    public override int HeaderBytes => 20;

    public override void Search(ReadOnlySpan<float> x, Span<byte> header, Span<byte> codes)
    {
        const float q4scale = 15f;
        Span<float> weights = stackalloc float[16], scales = stackalloc float[16], mins = stackalloc float[16];
        float maxScale = 0, maxMin = 0;
        for (int j = 0; j < 16; j++)
        {
            var xs = x.Slice(16 * j, 16);
            for (int l = 0; l < 16; l++) weights[l] = MathF.Abs(xs[l]);
            scales[j] = KQuantSearch.Qkx2(xs, weights, 3, codes.Slice(16 * j, 16), out mins[j], -0.5f, 0.1f, 15, true);
            if (scales[j] > maxScale) maxScale = scales[j];
            if (mins[j] > maxMin) maxMin = mins[j];
        }
        var sc = header[..16];
        sc.Clear();
        if (maxScale > 0)
        {
            float iscale = q4scale / maxScale;
            for (int j = 0; j < 16; j++) sc[j] = unchecked((byte)KQuantSearch.NearestInt(iscale * scales[j]));
            WriteHalf(header[16..], maxScale / q4scale);
        }
        else WriteHalf(header[16..], 0f);
        if (maxMin > 0)
        {
            float iscale = q4scale / maxMin;
            for (int j = 0; j < 16; j++) sc[j] |= unchecked((byte)(KQuantSearch.NearestInt(iscale * mins[j]) << 4));
            WriteHalf(header[18..], maxMin / q4scale);
        }
        else WriteHalf(header[18..], 0f);
    }

    /// <summary>quantize_row_q2_K_impl: σ² = mean(x²) over the super-block.</summary>
    public override void Search(ReadOnlySpan<float> x, ReadOnlySpan<float> importance, Span<byte> header, Span<byte> codes)
    {
        Span<float> weights = stackalloc float[QK], scales = stackalloc float[16], mins = stackalloc float[16], sw = stackalloc float[16];
        KQuantSearch.SuperBlockWeights(x, importance, 1, 16, weights, sw);
        for (int j = 0; j < 16; j++)
            scales[j] = KQuantSearch.Qkx2(x.Slice(16 * j, 16), weights.Slice(16 * j, 16), 3, codes.Slice(16 * j, 16), out mins[j], -0.9f, 0.05f, 36, false);
        Span<byte> ls = stackalloc byte[16], lm = stackalloc byte[16];
        float dm = KQuantSearch.Qp(scales, 15, ls, sw);
        float mm = KQuantSearch.Qp(mins, 15, lm, sw);
        for (int j = 0; j < 16; j++) header[j] = unchecked((byte)(ls[j] | lm[j] << 4));
        WriteHalf(header[16..], dm);
        WriteHalf(header[18..], mm);
    }

    public override void SubScales(ReadOnlySpan<byte> header, Span<float> d, Span<float> m)
    {
        float dd = FromHalf(header[16..]), dm = FromHalf(header[18..]);
        for (int j = 0; j < 16; j++)
        {
            d[j] = dd * (header[j] & 0xF);
            m[j] = dm * (header[j] >> 4);
        }
    }

    public override void Pack(ReadOnlySpan<byte> header, ReadOnlySpan<byte> codes, Span<byte> block)
    {
        header[..16].CopyTo(block);
        PackCrumbs(codes, block.Slice(16, 64));
        header.Slice(16, 4).CopyTo(block[80..]);
    }

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

    public override int SubBlock => 16;
    public override int MaxCode => 7;
    public override int Offset => 4;
    /// <summary>[scales[12], d].</summary>
    public override int HeaderBytes => 14;

    public override void Search(ReadOnlySpan<float> x, Span<byte> header, Span<byte> codes)
    {
        Span<float> scales = stackalloc float[16];
        for (int j = 0; j < 16; j++) scales[j] = KQuantSearch.Q3(x.Slice(16 * j, 16), 4, codes.Slice(16 * j, 16));
        float maxScale = SignedAbsMax(scales);
        var sc = header[..12];
        sc.Clear();
        if (maxScale != 0)
        {
            float iscale = -32f / maxScale;
            for (int j = 0; j < 16; j++)
            {
                int l = Math.Clamp(KQuantSearch.NearestInt(iscale * scales[j]), -32, 31) + 32;
                if (j < 8) sc[j] = (byte)(l & 0xF);
                else sc[j - 8] |= (byte)((l & 0xF) << 4);
                l >>= 4;
                sc[j % 4 + 8] |= (byte)(l << (2 * (j / 4)));
            }
            WriteHalf(header[12..], 1 / iscale);
        }
        else WriteHalf(header[12..], 0f);
    }

    /// <summary>quantize_row_q3_K_impl: σ² = 2·mean(x²) over the super-block; the sub-block scales are
    /// quantized by the same weighted symmetric search, their weights summed.</summary>
    public override void Search(ReadOnlySpan<float> x, ReadOnlySpan<float> importance, Span<byte> header, Span<byte> codes)
    {
        Span<float> weights = stackalloc float[QK], scales = stackalloc float[16], sw = stackalloc float[16];
        KQuantSearch.SuperBlockWeights(x, importance, 2, 16, weights, sw);
        for (int j = 0; j < 16; j++)
            scales[j] = KQuantSearch.Qx(x.Slice(16 * j, 16), 4, codes.Slice(16 * j, 16), weights.Slice(16 * j, 16));
        var sc = header[..12];
        sc.Clear();
        Span<byte> ls = stackalloc byte[16];
        float dBlock = KQuantSearch.Qx(scales, 32, ls, sw);
        for (int j = 0; j < 16; j++)
        {
            int l = ls[j];
            if (j < 8) sc[j] = (byte)(l & 0xF);
            else sc[j - 8] |= (byte)((l & 0xF) << 4);
            l >>= 4;
            sc[j % 4 + 8] |= (byte)(l << (2 * (j / 4)));
        }
        WriteHalf(header[12..], dBlock);
    }

    public override void SubScales(ReadOnlySpan<byte> header, Span<float> d, Span<float> m)
    {
        float dd = FromHalf(header[12..]);
        for (int j = 0; j < 16; j++)
        {
            int low = j < 8 ? header[j] & 0xF : header[j - 8] >> 4;
            int high = (header[8 + j % 4] >> (2 * (j / 4))) & 3;
            d[j] = dd * ((low | high << 4) - 32);
            m[j] = 0;
        }
    }

    public override void Pack(ReadOnlySpan<byte> header, ReadOnlySpan<byte> codes, Span<byte> block)
    {
        // The high bit of element j goes to hmask[j % 32], bit j / 32.
        var hmask = block[..32];
        hmask.Clear();
        Span<byte> low = stackalloc byte[QK];
        for (int j = 0; j < QK; j++)
        {
            low[j] = codes[j];
            if (codes[j] > 3)
            {
                hmask[j % 32] |= (byte)(1 << (j / 32));
                low[j] = (byte)(codes[j] - 4);
            }
        }
        PackCrumbs(low, block.Slice(32, 64));
        header[..14].CopyTo(block[96..]);
    }

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

    public override int SubBlock => 32;
    public override int MaxCode => 15;
    public override int Offset => 0;
    /// <summary>[d, dmin, scales[12]] (the block's own first 16 bytes).</summary>
    public override int HeaderBytes => 16;

    public override void Search(ReadOnlySpan<float> x, Span<byte> header, Span<byte> codes) =>
        SearchScaleMins(x, header, codes, 15, -1f, 0.1f, 20);

    public override void Search(ReadOnlySpan<float> x, ReadOnlySpan<float> importance, Span<byte> header, Span<byte> codes) =>
        SearchScaleMins(x, importance, header, codes, 15);

    public override void SubScales(ReadOnlySpan<byte> header, Span<float> d, Span<float> m) => ScaleMinSubScales(header, d, m);

    public override void Pack(ReadOnlySpan<byte> header, ReadOnlySpan<byte> codes, Span<byte> block)
    {
        header[..16].CopyTo(block);
        var q = block.Slice(16, 128);
        for (int j = 0, at = 0; j < QK; j += 64, at += 32)
            for (int l = 0; l < 32; l++) q[at + l] = (byte)((codes[j + l] & 0xF) | (codes[j + l + 32] & 0xF) << 4);
    }

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

    public override int SubBlock => 32;
    public override int MaxCode => 31;
    public override int Offset => 0;
    /// <summary>[d, dmin, scales[12]] (the block's own first 16 bytes).</summary>
    public override int HeaderBytes => 16;

    public override void Search(ReadOnlySpan<float> x, Span<byte> header, Span<byte> codes) =>
        SearchScaleMins(x, header, codes, 31, -0.5f, 0.1f, 15);

    public override void Search(ReadOnlySpan<float> x, ReadOnlySpan<float> importance, Span<byte> header, Span<byte> codes) =>
        SearchScaleMins(x, importance, header, codes, 31);

    public override void SubScales(ReadOnlySpan<byte> header, Span<float> d, Span<float> m) => ScaleMinSubScales(header, d, m);

    public override void Pack(ReadOnlySpan<byte> header, ReadOnlySpan<byte> codes, Span<byte> block)
    {
        header[..16].CopyTo(block);
        var qh = block.Slice(16, 32);
        var ql = block.Slice(48, 128);
        qh.Clear();
        int m1 = 1, m2 = 2;
        for (int n = 0, at = 0; n < QK; n += 64, at += 32)
        {
            for (int j = 0; j < 32; j++)
            {
                int l1 = codes[n + j], l2 = codes[n + j + 32];
                if (l1 > 15) { l1 -= 16; qh[j] |= (byte)m1; }
                if (l2 > 15) { l2 -= 16; qh[j] |= (byte)m2; }
                ql[at + j] = (byte)(l1 | l2 << 4);
            }
            m1 <<= 2;
            m2 <<= 2;
        }
    }

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

    public override int SubBlock => 16;
    public override int MaxCode => 63;
    public override int Offset => 32;
    /// <summary>[scales[16] (int8), d].</summary>
    public override int HeaderBytes => 18;

    public override void Search(ReadOnlySpan<float> x, Span<byte> header, Span<byte> codes) => Search(x, default, header, codes);

    /// <summary>quantize_row_q6_K_impl: the importance itself weighs each sub-block's search (no σ² term).</summary>
    public override void Search(ReadOnlySpan<float> x, ReadOnlySpan<float> importance, Span<byte> header, Span<byte> codes)
    {
        Span<float> scales = stackalloc float[16];
        for (int j = 0; j < 16; j++)
            scales[j] = KQuantSearch.Qx(x.Slice(16 * j, 16), 32, codes.Slice(16 * j, 16), importance.IsEmpty ? default : importance.Slice(16 * j, 16));
        float maxScale = SignedAbsMax(scales);
        if (MathF.Abs(maxScale) < KQuantSearch.GroupMaxEps)
        {
            // The reference zeroes the whole block (codes included).
            header[..18].Clear();
            codes[..QK].Clear();
            return;
        }
        float iscale = -128f / maxScale;
        WriteHalf(header[16..], 1 / iscale);
        for (int j = 0; j < 16; j++) header[j] = unchecked((byte)(sbyte)Math.Min(127, KQuantSearch.NearestInt(iscale * scales[j])));
    }

    public override void SubScales(ReadOnlySpan<byte> header, Span<float> d, Span<float> m)
    {
        float dd = FromHalf(header[16..]);
        for (int j = 0; j < 16; j++)
        {
            d[j] = dd * (sbyte)header[j];
            m[j] = 0;
        }
    }

    public override void Pack(ReadOnlySpan<byte> header, ReadOnlySpan<byte> codes, Span<byte> block)
    {
        var ql = block[..128];
        var qh = block.Slice(128, 64);
        for (int j = 0, lo = 0, hi = 0; j < QK; j += 128, lo += 64, hi += 32)
            for (int l = 0; l < 32; l++)
            {
                int q1 = codes[j + l], q2 = codes[j + l + 32], q3 = codes[j + l + 64], q4 = codes[j + l + 96];
                ql[lo + l] = (byte)((q1 & 0xF) | (q3 & 0xF) << 4);
                ql[lo + l + 32] = (byte)((q2 & 0xF) | (q4 & 0xF) << 4);
                qh[hi + l] = (byte)((q1 >> 4) | (q2 >> 4) << 2 | (q3 >> 4) << 4 | (q4 >> 4) << 6);
            }
        header[..18].CopyTo(block[192..]);
    }

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
