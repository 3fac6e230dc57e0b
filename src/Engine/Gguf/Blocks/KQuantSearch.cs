namespace DotQuant.Engine.Gguf.Blocks;

/// <summary>llama.cpp's scale searches for the k-quants (ggml-quants.c make_qx_quants, make_q3_quants,
/// make_qkx2_quants), in the same float operations and order, so round-to-nearest on our k-quant grids
/// gives llama-quantize's bytes (without an importance matrix). Each returns a sub-block's scale (and
/// min) and its first codes; the caller quantizes that scale and recodes against the stored value.</summary>
static class KQuantSearch
{
    /// <summary>ggml's GROUP_MAX_EPS: below it a group is treated as all zero.</summary>
    public const float GroupMaxEps = 1e-15f;

    /// <summary>nearest_int: fval + 1.5·2²³ in float arithmetic, i.e. round half to even.</summary>
    public static int NearestInt(float x) => (int)MathF.Round(x, MidpointRounding.ToEven);

    /// <summary>Symmetric search (make_qx_quants, rmse_type 1): weights x², or <paramref name="qw"/> when
    /// given (an importance matrix's); codes l + nmax in [0, 2·nmax).</summary>
    public static float Qx(ReadOnlySpan<float> x, int nmax, Span<byte> L, ReadOnlySpan<float> qw = default)
    {
        bool weighted = !qw.IsEmpty;
        int n = x.Length;
        float max = BlockCodec.SignedAbsMax(x);
        if (MathF.Abs(max) < GroupMaxEps)
        {
            L[..n].Clear();
            return 0f;
        }
        float iscale = -nmax / max;
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; i++)
        {
            int l = Math.Clamp(NearestInt(iscale * x[i]), -nmax, nmax - 1);
            L[i] = (byte)(l + nmax);
            float w = weighted ? qw[i] : x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
        float best = scale * sumlx;
        for (int step = -9; step <= 9; step++)
        {
            if (step == 0) continue;
            iscale = -(nmax + 0.1f * step) / max;
            sumlx = suml2 = 0;
            for (int i = 0; i < n; i++)
            {
                int l = Math.Clamp(NearestInt(iscale * x[i]), -nmax, nmax - 1);
                float w = weighted ? qw[i] : x[i] * x[i];
                sumlx += w * x[i] * l;
                suml2 += w * l * l;
            }
            if (suml2 > 0 && sumlx * sumlx > best * suml2)
            {
                for (int i = 0; i < n; i++) L[i] = (byte)(nmax + Math.Clamp(NearestInt(iscale * x[i]), -nmax, nmax - 1));
                scale = sumlx / suml2;
                best = scale * sumlx;
            }
        }
        return scale;
    }

    /// <summary>Q3_K's symmetric search with coordinate-descent refinement (do_rmse): codes l + nmax.</summary>
    public static float Q3(ReadOnlySpan<float> x, int nmax, Span<byte> L)
    {
        int n = x.Length;
        float max = BlockCodec.SignedAbsMax(x);
        if (MathF.Abs(max) < GroupMaxEps)
        {
            L[..n].Clear();
            return 0f;
        }
        float iscale = -nmax / max;
        Span<int> l0 = stackalloc int[n];
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; i++)
        {
            int l = Math.Clamp(NearestInt(iscale * x[i]), -nmax, nmax - 1);
            l0[i] = l;
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        for (int attempt = 0; attempt < 5; attempt++)
        {
            int changed = 0;
            for (int i = 0; i < n; i++)
            {
                float w = x[i] * x[i];
                float slx = sumlx - w * x[i] * l0[i];
                if (slx > 0)
                {
                    float sl2 = suml2 - w * l0[i] * l0[i];
                    int newL = Math.Clamp(NearestInt(x[i] * sl2 / slx), -nmax, nmax - 1);
                    if (newL != l0[i])
                    {
                        slx += w * x[i] * newL;
                        sl2 += w * newL * newL;
                        if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2)
                        {
                            l0[i] = newL; sumlx = slx; suml2 = sl2;
                            changed++;
                        }
                    }
                }
            }
            if (changed == 0) break;
        }
        for (int i = 0; i < n; i++) L[i] = (byte)(l0[i] + nmax);
        return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
    }

    /// <summary>Affine search over scale steps (make_qkx2_quants): returns the scale, <paramref name="min"/>
    /// gets −min (a non-negative offset), codes in [0, nmax].</summary>
    public static float Qkx2(ReadOnlySpan<float> x, ReadOnlySpan<float> weights, int nmax, Span<byte> L, out float min,
        float rmin, float rdelta, int nstep, bool useMad)
    {
        int n = x.Length;
        Span<byte> aux = stackalloc byte[n];
        float lo = x[0], hi = x[0];
        float sumW = weights[0];
        float sumX = sumW * x[0];
        for (int i = 1; i < n; i++)
        {
            if (x[i] < lo) lo = x[i];
            if (x[i] > hi) hi = x[i];
            float w = weights[i];
            sumW += w;
            sumX += w * x[i];
        }
        if (lo > 0) lo = 0;
        if (hi == lo)
        {
            L[..n].Clear();
            min = -lo;
            return 0f;
        }
        float iscale = nmax / (hi - lo);
        float scale = 1 / iscale;
        float bestError = 0;
        for (int i = 0; i < n; i++)
        {
            int l = NearestInt(iscale * (x[i] - lo));
            L[i] = (byte)Math.Max(0, Math.Min(nmax, l));
            float diff = scale * L[i] + lo - x[i];
            diff = useMad ? MathF.Abs(diff) : diff * diff;
            bestError += weights[i] * diff;
        }
        if (nstep < 1)
        {
            min = -lo;
            return scale;
        }
        for (int step = 0; step <= nstep; step++)
        {
            iscale = (rmin + rdelta * step + nmax) / (hi - lo);
            float sumL = 0, sumL2 = 0, sumXl = 0;
            for (int i = 0; i < n; i++)
            {
                int l = Math.Max(0, Math.Min(nmax, NearestInt(iscale * (x[i] - lo))));
                aux[i] = (byte)l;
                float w = weights[i];
                sumL += w * l;
                sumL2 += w * l * l;
                sumXl += w * l * x[i];
            }
            float D = sumW * sumL2 - sumL * sumL;
            if (D > 0)
            {
                float thisScale = (sumW * sumXl - sumX * sumL) / D;
                float thisMin = (sumL2 * sumX - sumL * sumXl) / D;
                if (thisMin > 0)
                {
                    thisMin = 0;
                    thisScale = sumXl / sumL2;
                }
                float error = 0;
                for (int i = 0; i < n; i++)
                {
                    float diff = thisScale * aux[i] + thisMin - x[i];
                    diff = useMad ? MathF.Abs(diff) : diff * diff;
                    error += weights[i] * diff;
                }
                if (error < bestError)
                {
                    aux.CopyTo(L);
                    bestError = error;
                    scale = thisScale;
                    lo = thisMin;
                }
            }
        }
        min = -lo;
        return scale;
    }

    /// <summary>make_qp_quants: non-negative values (a super-block's sub-block scales or mins) quantized to
    /// [0, nmax] against one scale, searched and refined with weights <paramref name="qw"/> (the importance
    /// summed per sub-block). Codes are bytes as the reference's uint8_t holds them.</summary>
    public static float Qp(ReadOnlySpan<float> x, int nmax, Span<byte> L, ReadOnlySpan<float> qw)
    {
        int n = x.Length;
        float max = 0;
        for (int i = 0; i < n; i++) max = max > x[i] ? max : x[i];
        if (max < GroupMaxEps)
        {
            L[..n].Clear();
            return 0f;
        }
        float iscale = nmax / max;
        for (int i = 0; i < n; i++) L[i] = unchecked((byte)NearestInt(iscale * x[i]));
        float scale = 1 / iscale;
        float bestMse = 0;
        for (int i = 0; i < n; i++)
        {
            float diff = x[i] - scale * L[i];
            bestMse += qw[i] * diff * diff;
        }
        for (int step = -4; step <= 4; step++)
        {
            if (step == 0) continue;
            float iscaleStep = (0.1f * step + nmax) / max;
            float scaleStep = 1 / iscaleStep;
            float mse = 0;
            for (int i = 0; i < n; i++)
            {
                int l = Math.Min(nmax, NearestInt(iscaleStep * x[i]));
                float diff = x[i] - scaleStep * l;
                mse += qw[i] * diff * diff;
            }
            if (mse < bestMse)
            {
                bestMse = mse;
                iscale = iscaleStep;
            }
        }
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; i++)
        {
            int l = Math.Min(nmax, NearestInt(iscale * x[i]));
            L[i] = unchecked((byte)l);
            float w = qw[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        for (int attempt = 0; attempt < 5; attempt++)
        {
            int changed = 0;
            for (int i = 0; i < n; i++)
            {
                float w = qw[i];
                float slx = sumlx - w * x[i] * L[i];
                float sl2 = suml2 - w * L[i] * L[i];
                if (slx > 0 && sl2 > 0)
                {
                    int newL = Math.Min(nmax, NearestInt(x[i] * sl2 / slx));
                    if (newL != L[i])
                    {
                        slx += w * x[i] * newL;
                        sl2 += w * newL * newL;
                        if (slx * slx * suml2 > sumlx * sumlx * sl2)
                        {
                            L[i] = unchecked((byte)newL); sumlx = slx; suml2 = sl2;
                            changed++;
                        }
                    }
                }
            }
            if (changed == 0) break;
        }
        return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
    }

    /// <summary>A super-block's importance weights as the k-quant impls form them: σ² = scale·Σx²/256,
    /// ω_j = imp_j·√(σ² + x_j²) for all 256 columns, and each sub-block's weights summed in order (what
    /// make_qp_quants / the scales' search weigh the sub-block scales with).</summary>
    public static void SuperBlockWeights(ReadOnlySpan<float> x, ReadOnlySpan<float> importance, float sigmaScale, int subBlock,
        Span<float> weights, Span<float> subBlockSums)
    {
        int n = x.Length;
        float sumX2 = 0;
        for (int j = 0; j < n; j++) sumX2 += x[j] * x[j];
        float sigma2 = sigmaScale * sumX2 / n;
        ImportanceWeights(x, importance, sigma2, weights);
        for (int j = 0; j < n / subBlock; j++)
        {
            float sumW = 0;
            for (int l = 0; l < subBlock; l++) sumW += weights[subBlock * j + l];
            subBlockSums[j] = sumW;
        }
    }

    /// <summary>The importance weights of llama.cpp's quantizers: ω_j = imp_j·√(σ² + x_j²).</summary>
    public static void ImportanceWeights(ReadOnlySpan<float> x, ReadOnlySpan<float> importance, float sigma2, Span<float> weights)
    {
        for (int l = 0; l < x.Length; l++) weights[l] = importance[l] * MathF.Sqrt(sigma2 + x[l] * x[l]);
    }
}
