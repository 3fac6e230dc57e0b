using static TorchSharp.torch;

namespace DotQuant.Engine.Quantizers;

/// <summary>A solved linear: integer codes with their per-group grids, in the layout every
/// checkpoint format derives from, and the dequantized weight the engine evaluates.</summary>
public sealed class QuantizedLinear : IDisposable
{
    /// <summary>Codes [out, in] (uint8, original column order).</summary>
    public required Tensor Codes { get; init; }
    /// <summary>Per-group scales [groups, out] in the solver's dtype (fp16-exact values when Fp16Scales).</summary>
    public required Tensor Scales { get; init; }
    /// <summary>Per-group zero points [groups, out] (int32, unshifted).</summary>
    public required Tensor Zeros { get; init; }
    /// <summary>Group of each input channel [in] (int32).</summary>
    public required Tensor GIdx { get; init; }
    public required int Bits { get; init; }
    public required int GroupSize { get; init; }
    /// <summary>Σ‖e_j‖² = tr(ΔW H_λ ΔWᵀ) (spec V-4); NaN when no statistics were used (RTN).</summary>
    public double Loss { get; init; } = double.NaN;
    /// <summary>The damping fraction that made H_λ factorizable (after retries).</summary>
    public double DampUsed { get; init; }

    /// <summary>scale[g_idx[k], r] · (code[r, k] − zero[g_idx[k], r]), computed in the scales'
    /// dtype exactly as the solver computed it, returned as <paramref name="dtype"/> (fp32 default).</summary>
    public Tensor Dequantize(ScalarType dtype = ScalarType.Float32)
    {
        using var scope = NewDisposeScope();
        var sd = Scales.dtype;
        using var g = GIdx.to(ScalarType.Int64);
        var s = Scales.index_select(0, g).t();                       // [out, in]
        var z = Zeros.to(sd).index_select(0, g).t();
        var w = (Codes.to(sd) - z).mul_(s).to(dtype);
        return scope.MoveToOuter(w);
    }

    public void Dispose()
    {
        Codes.Dispose();
        Scales.Dispose();
        Zeros.Dispose();
        GIdx.Dispose();
    }
}
