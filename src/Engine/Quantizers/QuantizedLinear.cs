using DotQuant.Engine.Formats;
using static TorchSharp.torch;

namespace DotQuant.Engine.Quantizers;

/// <summary>A solved linear: integer codes with their per-group grids, in the layout every
/// checkpoint format derives from, and the dequantized weight the engine evaluates.</summary>
public sealed class QuantizedLinear : SolvedLinear
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

    public override string Kind => "grid";
    public override long OutFeatures => Codes.shape[0];
    public override long InFeatures => Codes.shape[1];
    public override double PaperBits => Bits;

    /// <summary>Native layout: .qweight (I32, codes packed along the input), .scales (F16 [G, out]),
    /// .zeros (U8 [G, out], unshifted), .g_idx (I32 [in]).</summary>
    public override void Pack(IDictionary<string, Tensor> tensors, string prefix)
    {
        int m = (int)Codes.shape[0], n = (int)Codes.shape[1], groups = (int)Scales.shape[0];
        tensors[prefix + ".qweight"] = tensor(BitPacking.PackColumns(Codes.data<byte>().ToArray(), m, n, Bits), [BitPacking.Words(n, Bits), m]);
        tensors[prefix + ".scales"] = Scales.to(ScalarType.Float16);
        tensors[prefix + ".zeros"] = Zeros.to(ScalarType.Byte);
        tensors[prefix + ".g_idx"] = GIdx.clone();
    }

    /// <summary>scale[g_idx[k], r] · (code[r, k] − zero[g_idx[k], r]), computed in the scales'
    /// dtype exactly as the solver computed it, returned as <paramref name="dtype"/> (fp32 default).
    /// A few thousand rows at a time, so the only large allocation is the result.</summary>
    public override Tensor Dequantize(ScalarType dtype = ScalarType.Float32)
    {
        long m = Codes.shape[0], n = Codes.shape[1];
        long rows = Math.Max(1, (16L << 20) / Math.Max(1, n));
        var w = empty([m, n], dtype);
        using var g = GIdx.to(ScalarType.Int64);
        for (long r0 = 0; r0 < m; r0 += rows)
        {
            using var scope = NewDisposeScope();
            long count = Math.Min(rows, m - r0);
            var sd = Scales.dtype;
            var s = Scales.narrow(1, r0, count).index_select(0, g).t();                   // [rows, in]
            var z = Zeros.narrow(1, r0, count).to(sd).index_select(0, g).t();
            var part = (Codes.narrow(0, r0, count).to(sd) - z).mul_(s);
            w.narrow(0, r0, count).copy_(part);
        }
        return w;
    }

    public override void Dispose()
    {
        Codes.Dispose();
        Scales.Dispose();
        Zeros.Dispose();
        GIdx.Dispose();
    }
}
