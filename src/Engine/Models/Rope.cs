using DotQuant.Engine.IO;
using static TorchSharp.torch;

namespace DotQuant.Engine.Models;

/// <summary>Rotary position embedding in the rotate_half layout (transformers' Llama), with
/// <c>linear</c>, <c>llama3</c> and <c>longrope</c> frequency scaling and partial rotary (the leading
/// <see cref="ModelConfig.Rotary"/> dimensions of a head rotate, the rest pass). Computed in fp32 like
/// transformers.</summary>
public sealed class Rope : IDisposable
{
    readonly Tensor _invFreq;        // [R/2] fp32
    readonly Tensor? _longInvFreq;   // LongRoPE beyond the original context
    readonly int _original;
    readonly double _attentionFactor = 1;

    public Rope(ModelConfig config)
    {
        int dim = config.Rotary;
        var invFreq = new float[dim / 2];
        for (int i = 0; i < dim / 2; i++)
            invFreq[i] = (float)(1.0 / Math.Pow(config.RopeTheta, (2.0 * i) / dim));
        var s = config.RopeScaling;
        if (s is { Type: "linear" })
            for (int i = 0; i < invFreq.Length; i++) invFreq[i] = (float)(invFreq[i] / s.Factor);
        else if (s is { Type: "llama3" })
            ApplyLlama3(invFreq, s);
        else if (s is { Type: "longrope", ShortFactor: { } shortFactor, LongFactor: { } longFactor })
        {
            // transformers: inv_freq = 1 / (ext_factor · base^(2i/d)), the long factors once the sequence
            // is longer than the original context; cos and sin carry the attention factor.
            _longInvFreq = tensor(invFreq.Select((f, i) => (float)(1.0 / (longFactor[i] * Math.Pow(config.RopeTheta, (2.0 * i) / dim)))).ToArray()).DetachFromDisposeScope();
            invFreq = invFreq.Select((f, i) => (float)(1.0 / (shortFactor[i] * Math.Pow(config.RopeTheta, (2.0 * i) / dim)))).ToArray();
            _original = s.OriginalMaxPositions;
            _attentionFactor = s.AttentionFactor;
        }
        _invFreq = tensor(invFreq).DetachFromDisposeScope();
    }

    static void ApplyLlama3(float[] invFreq, RopeScaling s)
    {
        double lowWavelen = s.OriginalMaxPositions / s.LowFreqFactor;
        double highWavelen = s.OriginalMaxPositions / s.HighFreqFactor;
        for (int i = 0; i < invFreq.Length; i++)
        {
            double f = invFreq[i];
            double wavelen = 2 * Math.PI / f;
            if (wavelen > lowWavelen) f /= s.Factor;                 // long wavelengths: fully scaled
            else if (wavelen >= highWavelen)                          // medium: interpolate
            {
                double smooth = (s.OriginalMaxPositions / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                f = (1 - smooth) * f / s.Factor + smooth * f;
            }
            invFreq[i] = (float)f;
        }
    }

    /// <summary>cos and sin tables [T, D] for positions start..start+T-1.</summary>
    public (Tensor Cos, Tensor Sin) Tables(long start, long length) => Tables(start, length, start + length > _original);

    /// <summary>LongRoPE switches every position to the long factors once a forward's last position passes
    /// the original context; a graph that decides at run time needs both tables whole.</summary>
    public bool HasLongFactors => _longInvFreq is not null;

    /// <summary>The original context beyond which LongRoPE uses its long factors.</summary>
    public int OriginalContext => _original;

    /// <summary>Tables with LongRoPE's long (or short) factors whatever the positions.</summary>
    public (Tensor Cos, Tensor Sin) Tables(long start, long length, bool longFactors)
    {
        using var pos = arange(Scalars.Of(start), Scalars.Of(start + length), Scalars.Of(1L), dtype: ScalarType.Float32);
        var invFreq = _longInvFreq is not null && longFactors ? _longInvFreq : _invFreq;
        using var freqs = outer(pos, invFreq);
        using var emb = cat([freqs, freqs], -1);
        if (_attentionFactor == 1) return (emb.cos(), emb.sin());
        using var cos = emb.cos();
        using var sin = emb.sin();
        return (cos.mul(Scalars.Of(_attentionFactor)), sin.mul(Scalars.Of(_attentionFactor)));
    }

    /// <summary>x·cos + rotate_half(x)·sin for x [B, H, T, D] on the leading R = cos.shape[-1] dimensions;
    /// the rest of each head passes unchanged (partial rotary).</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        long d = x.shape[^1], r = cos.shape[^1];
        if (r < d)
            return cat([Apply(x.narrow(-1, 0, r), cos, sin), x.narrow(-1, r, d - r)], -1);
        long half = d / 2;
        var x1 = x.narrow(-1, 0, half);
        var x2 = x.narrow(-1, half, half);
        var rotated = cat([x2.neg(), x1], -1);
        return (x * cos).add(rotated * sin, Scalars.One);
    }

    public void Dispose()
    {
        _invFreq.Dispose();
        _longInvFreq?.Dispose();
    }
}
