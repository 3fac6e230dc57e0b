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
        var sd = Scales.dtype;
        // Groups of consecutive columns (no act order, whole groups): the grids broadcast over each
        // group's columns instead of being gathered per column — the same (code − zero)·scale per
        // weight, several times faster; the engine rebuilds solved weights for every product.
        bool contiguous = GroupSize > 0 && n % GroupSize == 0 && Scales.shape[0] == n / GroupSize && IsContiguousGrouping();
        using var g = contiguous ? null : GIdx.to(ScalarType.Int64);
        for (long r0 = 0; r0 < m; r0 += rows)
        {
            using var scope = NewDisposeScope();
            long count = Math.Min(rows, m - r0);
            Tensor part;
            if (contiguous)
            {
                long groups = n / GroupSize;
                var s = Scales.narrow(1, r0, count).t().unsqueeze(2);                         // [rows, groups, 1]
                var z = Zeros.narrow(1, r0, count).to(sd).t().unsqueeze(2);
                part = (Codes.narrow(0, r0, count).to(sd).view(count, groups, GroupSize) - z).mul_(s).view(count, n);
            }
            else
            {
                var s = Scales.narrow(1, r0, count).index_select(0, g!).t();                   // [rows, in]
                var z = Zeros.narrow(1, r0, count).to(sd).index_select(0, g!).t();
                part = (Codes.narrow(0, r0, count).to(sd) - z).mul_(s);
            }
            w.narrow(0, r0, count).copy_(part);
        }
        return w;
    }

    /// <summary>g_idx[k] = k / group size for every column (no act-order permutation of the groups).</summary>
    bool IsContiguousGrouping()
    {
        if (_contiguous is bool known) return known;
        using var scope = NewDisposeScope();
        var expected = Scalars.Range(Codes.shape[1], ScalarType.Int64).div(Scalars.Of(GroupSize), rounding_mode: RoundingMode.floor);
        _contiguous = GIdx.shape[0] == expected.shape[0] && GIdx.to(ScalarType.Int64).eq(expected).all().item<bool>();
        return _contiguous.Value;
    }

    bool? _contiguous;

    public override void Dispose()
    {
        Codes.Dispose();
        Scales.Dispose();
        Zeros.Dispose();
        GIdx.Dispose();
    }
}
