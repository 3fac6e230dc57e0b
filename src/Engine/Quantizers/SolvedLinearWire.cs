using System.Text.Json;
using System.Text.Json.Nodes;
using DotQuant.Runtime;
using DotQuant.Engine.Gguf;
using DotQuant.Engine.Gguf.Grids;
using static TorchSharp.torch;

namespace DotQuant.Engine.Quantizers;

/// <summary>A solved linear as it travels between the processes of a distributed run: its kind, a few
/// fields (shapes, bits, the solver's loss and damping) and the tensors its weight is rebuilt from.
/// Unlike <see cref="SolvedLinear.Pack"/> (a file format, which may narrow scales to fp16) it is lossless:
/// the receiver's <see cref="SolvedLinear.Dequantize"/> gives the sender's bits, so a worker that
/// computes with a linear solved elsewhere computes what a single process computes, and at about a
/// byte per weight or less instead of fp32's four.</summary>
public sealed class WireLinear(string kind, JsonObject fields, IReadOnlyList<(string Name, Tensor Tensor)> tensors) : IDisposable
{
    public string Kind => kind;
    public JsonObject Fields => fields;
    /// <summary>Contiguous CPU tensors, owned.</summary>
    public IReadOnlyList<(string Name, Tensor Tensor)> Tensors => tensors;

    public Tensor this[string name] => tensors.FirstOrDefault(t => t.Name == name).Tensor
                                       ?? throw new DotQuantException(ErrorCodes.Internal, $"a {kind} linear on the wire lacks tensor '{name}'");

    public void Dispose()
    {
        foreach (var (_, t) in tensors) t.Dispose();
    }
}

/// <summary>Encodes and decodes <see cref="WireLinear"/>: one case per solved kind (a new
/// <see cref="SolvedLinear"/> type adds its pair here).</summary>
public static class SolvedLinearWire
{
    public static WireLinear Encode(SolvedLinear q)
    {
        var f = new JsonObject { ["out"] = q.OutFeatures, ["in"] = q.InFeatures, ["loss"] = BitConverter.DoubleToInt64Bits(q.Loss), ["damp"] = BitConverter.DoubleToInt64Bits(q.DampUsed) };
        var t = new List<(string, Tensor)>();
        try
        {
            switch (q)
            {
                case QuantizedLinear g:
                    f["bits"] = g.Bits;
                    f["group_size"] = g.GroupSize;
                    // A byte per code: bit-packing in C# cost more than the bytes it saved on loopback.
                    t.Add(("codes", g.Codes.contiguous().clone()));
                    t.Add(("scales", g.Scales.contiguous().clone()));
                    t.Add(("zeros", g.Zeros.contiguous().clone()));
                    t.Add(("g_idx", g.GIdx.contiguous().clone()));
                    break;
                case SpqrLinear s:
                    f["options"] = JsonSerializer.SerializeToNode(s.Options);
                    foreach (var (name, x) in new[] { ("codes", s.Codes), ("scale_codes", s.ScaleCodes), ("zero_codes", s.ZeroCodes), ("scale_stats", s.ScaleStats),
                                 ("zero_stats", s.ZeroStats), ("perm", s.Perm), ("row_offsets", s.RowOffsets), ("outlier_columns", s.OutlierColumns), ("outlier_values", s.OutlierValues) })
                        t.Add((name, x.contiguous().clone()));
                    break;
                case BinaryLinear b:
                    f["block_size"] = b.BlockSize;
                    foreach (var (name, x) in new[] { ("signs", b.Signs), ("residual_signs", b.ResidualSigns), ("sparse", b.Sparse), ("salient", b.Salient), ("params", b.Params) })
                        t.Add((name, x.contiguous().clone()));
                    break;
                case GgufRowsLinear r:
                    f["type"] = r.Type.ToString();
                    long rowBytes = GgmlTypeInfo.Of(r.Type).RowBytes(r.InFeatures);
                    t.Add(("rows", tensor(r.EncodeRows(0, r.OutFeatures), [r.OutFeatures, rowBytes])));
                    break;
                default:
                    throw new DotQuantException(ErrorCodes.Internal, $"a {q.Kind} linear ({q.GetType().Name}) has no wire form");
            }
            return new WireLinear(q.Kind, f, t);
        }
        catch
        {
            foreach (var (_, x) in t) x.Dispose();
            throw;
        }
    }

    /// <summary>The solved linear <paramref name="w"/> stands for (its tensors are copied; <paramref name="w"/> stays the caller's).</summary>
    public static SolvedLinear Decode(WireLinear w)
    {
        var f = w.Fields;
        long m = (long)f["out"]!, n = (long)f["in"]!;
        // Bit patterns: NaN (round-to-nearest has no loss) is no JSON number, and the values stay exact.
        double loss = BitConverter.Int64BitsToDouble((long)f["loss"]!), damp = BitConverter.Int64BitsToDouble((long)f["damp"]!);
        Tensor Copy(string name) => w[name].clone();
        switch (w.Kind)
        {
            case "grid":
                return new QuantizedLinear
                {
                    Codes = Copy("codes"), Scales = Copy("scales"), Zeros = Copy("zeros"), GIdx = Copy("g_idx"), Bits = (int)f["bits"]!, GroupSize = (int)f["group_size"]!,
                    Loss = loss, DampUsed = damp,
                };
            case "spqr":
                return new SpqrLinear
                {
                    Codes = Copy("codes"), ScaleCodes = Copy("scale_codes"), ZeroCodes = Copy("zero_codes"), ScaleStats = Copy("scale_stats"), ZeroStats = Copy("zero_stats"),
                    Perm = Copy("perm"), RowOffsets = Copy("row_offsets"), OutlierColumns = Copy("outlier_columns"), OutlierValues = Copy("outlier_values"),
                    Options = f["options"].Deserialize<SpqrOptions>()!, Loss = loss, DampUsed = damp,
                };
            case "billm":
                return new BinaryLinear
                {
                    Signs = Copy("signs"), ResidualSigns = Copy("residual_signs"), Sparse = Copy("sparse"), Salient = Copy("salient"), Params = Copy("params"),
                    BlockSize = (int)f["block_size"]!, Loss = loss, DampUsed = damp,
                };
            case "gguf":
                var type = Enum.Parse<GgmlType>((string)f["type"]!);
                using (var rows = w["rows"].contiguous())
                    return new EncodedRowsLinear(type, rows.data<byte>().ToArray(), m, n) { Loss = loss, DampUsed = damp };
            default:
                throw new DotQuantException(ErrorCodes.Internal, $"no solved linear of kind '{w.Kind}'");
        }
    }
}
