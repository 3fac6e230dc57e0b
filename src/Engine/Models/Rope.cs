using DotQuant.Engine.IO;
using static TorchSharp.torch;

namespace DotQuant.Engine.Models;

/// <summary>Rotary position embedding in the rotate_half layout (transformers' Llama), with
/// <c>linear</c> and <c>llama3</c> frequency scaling. Computed in fp32 like transformers.</summary>
public sealed class Rope : IDisposable
{
    readonly Tensor _invFreq;    // [D/2] fp32

    public Rope(ModelConfig config)
    {
        int dim = config.HeadDim;
        var invFreq = new float[dim / 2];
        for (int i = 0; i < dim / 2; i++)
            invFreq[i] = (float)(1.0 / Math.Pow(config.RopeTheta, (2.0 * i) / dim));
        var s = config.RopeScaling;
        if (s is { Type: "linear" })
            for (int i = 0; i < invFreq.Length; i++) invFreq[i] = (float)(invFreq[i] / s.Factor);
        else if (s is { Type: "llama3" })
            ApplyLlama3(invFreq, s);
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
    public (Tensor Cos, Tensor Sin) Tables(long start, long length)
    {
        using var pos = arange(Scalars.Of(start), Scalars.Of(start + length), Scalars.Of(1L), dtype: ScalarType.Float32);
        using var freqs = outer(pos, _invFreq);
        using var emb = cat([freqs, freqs], -1);
        return (emb.cos(), emb.sin());
    }

    /// <summary>x·cos + rotate_half(x)·sin for x [B, H, T, D].</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        long half = x.shape[^1] / 2;
        var x1 = x.narrow(-1, 0, half);
        var x2 = x.narrow(-1, half, half);
        var rotated = cat([x2.neg(), x1], -1);
        return (x * cos).add(rotated * sin, Scalars.One);
    }

    public void Dispose() => _invFreq.Dispose();
}
