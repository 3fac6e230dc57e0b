using System.Text.Json.Nodes;
using DotQuant.Engine.Formats;
using DotQuant.Engine.IO;
using static TorchSharp.torch;

namespace DotQuant.Engine.Quantizers;

/// <summary>A BiLLM layer (spec §4.2–4.3). Per block of columns and per row, three binary groups:
/// concentrated and sparse non-salient weights (μ + α·s each) and salient columns with a residual
/// second term ((μ1 + α1·s1) + (μ2 + α2·s2)). Stored: one sign bit per weight, a second sign bit per
/// salient weight, one split bit per weight (concentrated/sparse), one flag bit per column, and the
/// eight fp16 numbers per row and block.</summary>
public sealed class BinaryLinear : SolvedLinear
{
    public required Tensor Signs { get; init; }          // [m, n] bool: first-order sign (true = +1)
    public required Tensor ResidualSigns { get; init; }  // [m, nSalient] bool: second-order sign, salient columns in ascending order
    public required Tensor Sparse { get; init; }         // [m, n] bool: non-salient weight in the sparse group
    public required Tensor Salient { get; init; }        // [n] bool
    public required Tensor Params { get; init; }         // [blocks, m, 8] fp32 holding fp16 values
    public required int BlockSize { get; init; }

    public override string Kind => "billm";
    public override long OutFeatures => Signs.shape[0];
    public override long InFeatures => Signs.shape[1];
    public long SalientColumns => ResidualSigns.shape[1];

    /// <summary>BiLLM's N_param = 2·r_sal + 1·(1 − r_sal) (the paper's "weight bits").</summary>
    public override double PaperBits => 1 + (double)SalientColumns / InFeatures;
    /// <summary>BiLLM's N_storing = 1 + 1/b_size (the split bit and the column flags), reported apart.</summary>
    public double FlagBits => 1 + 1.0 / BlockSize;

    /// <summary>The value of one binary term: μ + α·(±1), computed exactly as the solver does.</summary>
    internal static Tensor Term(Tensor mu, Tensor alpha, Tensor sign) =>
        mu.unsqueeze(1).Plus(alpha.unsqueeze(1) * sign.to(mu.dtype).mul(Scalars.Of(2L)).sub(Scalars.Of(1L)));

    public override Tensor Dequantize(ScalarType dtype = ScalarType.Float32)
    {
        using var scope = NewDisposeScope();
        long m = OutFeatures, n = InFeatures;
        var w = zeros(m, n);
        var residual = zeros(m, n, dtype: ScalarType.Bool);
        var salientIdx = Salient.nonzero().squeeze(1);
        if (salientIdx.numel() > 0) residual.index_copy_(1, salientIdx, ResidualSigns);
        for (long c0 = 0, b = 0; c0 < n; c0 += BlockSize, b++)
        {
            long count = Math.Min(BlockSize, n - c0);
            var p = Params[b];
            var s1 = Signs.narrow(1, c0, count);
            var sal = Salient.narrow(0, c0, count).unsqueeze(0).expand(m, count);
            var sparse = Sparse.narrow(1, c0, count);
            var concentrated = Term(p.select(1, 0), p.select(1, 1), s1);
            var spread = Term(p.select(1, 2), p.select(1, 3), s1);
            var salient = Term(p.select(1, 4), p.select(1, 5), s1).Plus(Term(p.select(1, 6), p.select(1, 7), residual.narrow(1, c0, count)));
            var v = where(sal, salient, where(sparse, spread, concentrated));
            w.narrow(1, c0, count).copy_(v);
        }
        return scope.MoveToOuter(w.to(dtype));
    }

    public override JsonObject Describe() => new() { ["block_size"] = BlockSize, ["salient_columns"] = SalientColumns };

    static Tensor Bits(Tensor mask) =>
        tensor(BitPacking.PackColumns(mask.to(ScalarType.Byte).data<byte>().ToArray(), (int)mask.shape[0], (int)mask.shape[1], 1), [BitPacking.Words(mask.shape[1], 1), mask.shape[0]]);

    static Tensor Unbits(Tensor packed, long rows, long count) =>
        tensor(BitPacking.UnpackColumns(packed.data<int>().ToArray(), (int)rows, (int)count, 1), [rows, count]).to(ScalarType.Bool);

    /// <summary>.binary_signs, .binary_residual_signs, .binary_split (I32, 1-bit streams per row along
    /// the input), .binary_salient (I32 [words(n), 1]), .binary_params (F16 [blocks, m, 8]).</summary>
    public override void Pack(IDictionary<string, Tensor> tensors, string prefix)
    {
        tensors[prefix + ".binary_signs"] = Bits(Signs);
        tensors[prefix + ".binary_residual_signs"] = Bits(ResidualSigns);
        tensors[prefix + ".binary_split"] = Bits(Sparse);
        tensors[prefix + ".binary_salient"] = Bits(Salient.unsqueeze(0));
        tensors[prefix + ".binary_params"] = Params.to(ScalarType.Float16);
    }

    public static BinaryLinear Read(Checkpoint ckpt, string prefix, long m, long n, JsonNode layer)
    {
        int block = (int)layer["block_size"]!;
        long salient = (long)layer["salient_columns"]!;
        long blocks = (n + block - 1) / block;
        using var scope = NewDisposeScope();
        Tensor Expect(string suffix, ScalarType dtype, params long[] shape) => PackageTensors.Expect(ckpt, prefix + suffix, dtype, shape);
        var flags = Unbits(Expect(".binary_salient", ScalarType.Int32, BitPacking.Words(n, 1), 1), 1, n).squeeze(0);
        if (flags.sum().item<long>() != salient)
            throw new DotQuant.Runtime.DotQuantException(DotQuant.Runtime.ErrorCodes.PackageRead, $"{prefix}.binary_salient flags {flags.sum().item<long>()} columns, dotquant.json says {salient}", ckpt.Directory);
        var result = new BinaryLinear
        {
            Signs = scope.MoveToOuter(Unbits(Expect(".binary_signs", ScalarType.Int32, BitPacking.Words(n, 1), m), m, n)),
            ResidualSigns = scope.MoveToOuter(Unbits(Expect(".binary_residual_signs", ScalarType.Int32, BitPacking.Words(salient, 1), m), m, salient)),
            Sparse = scope.MoveToOuter(Unbits(Expect(".binary_split", ScalarType.Int32, BitPacking.Words(n, 1), m), m, n)),
            Salient = scope.MoveToOuter(flags),
            Params = scope.MoveToOuter(Expect(".binary_params", ScalarType.Float16, blocks, m, 8).to(ScalarType.Float32)),
            BlockSize = block,
        };
        return result;
    }

    public override void Dispose()
    {
        foreach (var t in new[] { Signs, ResidualSigns, Sparse, Salient, Params }) t.Dispose();
    }
}
