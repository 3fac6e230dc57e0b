using System.Text.Json.Nodes;
using DotQuant.Runtime;
using DotQuant.Engine.Formats;
using DotQuant.Engine.IO;
using static TorchSharp.torch;

namespace DotQuant.Engine.Quantizers;

/// <summary>A SpQR layer (spec §3.6), stored in the permuted column order the solver used:
/// b-bit codes per weight; per β1-column group and row a scale and zero that are themselves
/// b_s/b_z-bit codes on fp16 second-level grids shared by β2 consecutive rows; and the outliers
/// in CSR with one 32-bit word each (fp16 value in the high half, column in the low half, as the
/// SpQR kernel stores them). An outlier replaces the dense value at its position.</summary>
public sealed class SpqrLinear : SolvedLinear
{
    public required Tensor Codes { get; init; }        // [m, n] uint8, permuted columns
    public required Tensor ScaleCodes { get; init; }   // [G, m] uint8
    public required Tensor ZeroCodes { get; init; }    // [G, m] uint8
    public required Tensor ScaleStats { get; init; }   // [G, R, 2] fp32 holding fp16 values (scale, zero of the scales)
    public required Tensor ZeroStats { get; init; }    // [G, R, 2]
    public required Tensor Perm { get; init; }         // [n] int32: stored column j is original column Perm[j]
    public required Tensor RowOffsets { get; init; }   // [m+1] int32
    public required Tensor OutlierColumns { get; init; } // [nnz] int32 (permuted column ids)
    public required Tensor OutlierValues { get; init; }  // [nnz] fp16
    public required SpqrOptions Options { get; init; }

    public override string Kind => "spqr";
    public override long OutFeatures => Codes.shape[0];
    public override long InFeatures => Codes.shape[1];
    public long OutlierCount => OutlierValues.shape[0];
    public double OutlierFraction => (double)OutlierCount / (OutFeatures * InFeatures);

    public override double PaperBits => SpqrOptions.AverageBits(Options.Bits, Options.ScaleBits, Options.ZeroBits,
        Options.GroupSize, Options.StatGroupSize, OutlierFraction);

    /// <summary>x̂ = s2[row group]·(code − z2[row group]) for one level of statistics. Shared by the
    /// solver and the reader so the stored grid is exactly the one the solver compensated for.</summary>
    public static Tensor SecondLevel(Tensor codes, Tensor stats, int beta2)
    {
        long m = codes.shape[^1];
        using var rows = Scalars.Range(m, ScalarType.Int64).div(Scalars.Of(beta2), RoundingMode.floor);
        var s = stats.select(-1, 0).index_select(-1, rows);
        var z = stats.select(-1, 1).index_select(-1, rows);
        return s * (codes.to(ScalarType.Float32) - z);
    }

    public override Tensor Dequantize(ScalarType dtype = ScalarType.Float32)
    {
        using var scope = NewDisposeScope();
        int g = Options.GroupSize;
        long m = OutFeatures, n = InFeatures;
        var s = SecondLevel(ScaleCodes, ScaleStats, Options.StatGroupSize);   // [G, m]
        var z = SecondLevel(ZeroCodes, ZeroStats, Options.StatGroupSize);
        var group = Scalars.Range(n, ScalarType.Int64).div(Scalars.Of(g), RoundingMode.floor);
        var w = (Codes.to(ScalarType.Float32) - z.index_select(0, group).t()).mul_(s.index_select(0, group).t());
        if (OutlierCount > 0)
        {
            var offsets = RowOffsets.to(ScalarType.Int64);
            var counts = offsets.narrow(0, 1, m) - offsets.narrow(0, 0, m);
            var rows = Scalars.Range(m, ScalarType.Int64).repeat_interleave(counts);
            var flat = rows.mul(Scalars.Of(n)).Plus(OutlierColumns.to(ScalarType.Int64));
            w.view(-1).index_put_(OutlierValues.to(ScalarType.Float32), flat);
        }
        var perm = Perm.to(ScalarType.Int64);
        var restored = w.index_select(1, perm.argsort(0));
        return scope.MoveToOuter(restored.to(dtype));
    }

    public override JsonObject Describe() => new()
    {
        ["group_size"] = Options.GroupSize,
        ["scale_bits"] = Options.ScaleBits,
        ["zero_bits"] = Options.ZeroBits,
        ["stat_group_size"] = Options.StatGroupSize,
        ["outliers"] = OutlierCount,
    };

    /// <summary>.qweight I32 (codes packed along the input, permuted order), .perm I32 [n],
    /// .scale_codes/.zero_codes I32 [G, words(m)] (b_s/b_z-bit streams per group), .scale_stats/.zero_stats
    /// F16 [G, R, 2], .outlier_offsets I32 [m+1], .outliers I32 [nnz] (fp16 bits &lt;&lt; 16 | column).</summary>
    public override void Pack(IDictionary<string, Tensor> tensors, string prefix)
    {
        int m = (int)OutFeatures, n = (int)InFeatures, groups = (int)ScaleCodes.shape[0];
        var o = Options;
        tensors[prefix + ".qweight"] = tensor(BitPacking.PackColumns(Codes.data<byte>().ToArray(), m, n, o.Bits), [BitPacking.Words(n, o.Bits), m]);
        tensors[prefix + ".perm"] = Perm.clone();
        tensors[prefix + ".scale_codes"] = tensor(BitPacking.PackRows(ScaleCodes.data<byte>().ToArray(), groups, m, o.ScaleBits), [groups, BitPacking.Words(m, o.ScaleBits)]);
        tensors[prefix + ".zero_codes"] = tensor(BitPacking.PackRows(ZeroCodes.data<byte>().ToArray(), groups, m, o.ZeroBits), [groups, BitPacking.Words(m, o.ZeroBits)]);
        tensors[prefix + ".scale_stats"] = ScaleStats.to(ScalarType.Float16);
        tensors[prefix + ".zero_stats"] = ZeroStats.to(ScalarType.Float16);
        tensors[prefix + ".outlier_offsets"] = RowOffsets.clone();
        var values = OutlierValues.to(ScalarType.Float32).data<float>().ToArray();
        var columns = OutlierColumns.data<int>().ToArray();
        var words = new int[values.Length];
        for (int i = 0; i < words.Length; i++)
            words[i] = (BitConverter.HalfToInt16Bits((Half)values[i]) << 16) | (columns[i] & 0xFFFF);
        tensors[prefix + ".outliers"] = tensor(words, [words.LongLength]);
    }

    public static SpqrLinear Read(Checkpoint ckpt, string prefix, long m, long n, int bits, JsonNode layer)
    {
        var o = new SpqrOptions
        {
            Bits = bits,
            GroupSize = (int)layer["group_size"]!,
            ScaleBits = (int)layer["scale_bits"]!,
            ZeroBits = (int)layer["zero_bits"]!,
            StatGroupSize = (int)layer["stat_group_size"]!,
        };
        int groups = (int)((n + o.GroupSize - 1) / o.GroupSize), r = (int)((m + o.StatGroupSize - 1) / o.StatGroupSize);
        using var scope = NewDisposeScope();
        Tensor Expect(string suffix, ScalarType dtype, params long[] shape) => PackageTensors.Expect(ckpt, prefix + suffix, dtype, shape);
        var qweight = Expect(".qweight", ScalarType.Int32, BitPacking.Words(n, bits), m);
        var perm = Expect(".perm", ScalarType.Int32, n);
        var sc = Expect(".scale_codes", ScalarType.Int32, groups, BitPacking.Words(m, o.ScaleBits));
        var zc = Expect(".zero_codes", ScalarType.Int32, groups, BitPacking.Words(m, o.ZeroBits));
        var ss = Expect(".scale_stats", ScalarType.Float16, groups, r, 2);
        var zs = Expect(".zero_stats", ScalarType.Float16, groups, r, 2);
        var offsets = Expect(".outlier_offsets", ScalarType.Int32, m + 1);
        var off = offsets.data<int>().ToArray();
        long nnz = off[^1];
        var words = Expect(".outliers", ScalarType.Int32, nnz);
        if (off[0] != 0 || off.Zip(off.Skip(1)).Any(p => p.Second < p.First))
            throw new DotQuantException(ErrorCodes.PackageRead, $"{prefix}.outlier_offsets is not a non-decreasing CSR offset array from 0", ckpt.Directory);
        var permHost = perm.data<int>().ToArray();
        if (permHost.Any(p => p < 0 || p >= n) || permHost.Distinct().Count() != n)
            throw new DotQuantException(ErrorCodes.PackageRead, $"{prefix}.perm is not a permutation of [0, {n})", ckpt.Directory);
        var hostWords = words.data<int>().ToArray();
        var colHost = hostWords.Select(x => x & 0xFFFF).ToArray();
        if (colHost.Any(c => c >= n))
            throw new DotQuantException(ErrorCodes.PackageRead, $"{prefix}.outliers has a column outside [0, {n})", ckpt.Directory);
        var cols = tensor(colHost, [nnz]);
        var values = tensor(hostWords.Select(x => (float)BitConverter.Int16BitsToHalf((short)(x >> 16))).ToArray(), [nnz]).to(ScalarType.Float16);
        var result = new SpqrLinear
        {
            Codes = scope.MoveToOuter(tensor(BitPacking.UnpackColumns(qweight.data<int>().ToArray(), (int)m, (int)n, bits), [m, n])),
            ScaleCodes = scope.MoveToOuter(tensor(BitPacking.UnpackRows(sc.data<int>().ToArray(), groups, (int)m, o.ScaleBits), [groups, m])),
            ZeroCodes = scope.MoveToOuter(tensor(BitPacking.UnpackRows(zc.data<int>().ToArray(), groups, (int)m, o.ZeroBits), [groups, m])),
            ScaleStats = scope.MoveToOuter(ss.to(ScalarType.Float32)),
            ZeroStats = scope.MoveToOuter(zs.to(ScalarType.Float32)),
            Perm = scope.MoveToOuter(perm.clone()),
            RowOffsets = scope.MoveToOuter(offsets.clone()),
            OutlierColumns = scope.MoveToOuter(cols),
            OutlierValues = scope.MoveToOuter(values.clone()),
            Options = o,
        };
        return result;
    }

    public override void Dispose()
    {
        foreach (var t in new[] { Codes, ScaleCodes, ZeroCodes, ScaleStats, ZeroStats, Perm, RowOffsets, OutlierColumns, OutlierValues }) t.Dispose();
    }
}
