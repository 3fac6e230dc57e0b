using DotQuant.Engine.Gguf.Blocks;
using DotQuant.Engine.Quantizers;
using static TorchSharp.torch;

namespace DotQuant.Engine.Gguf.Grids;

/// <summary>A linear solved on a GGUF block grid: whatever its type, it is finally the rows llama.cpp
/// reads. Values are what those bytes decode to (llama.cpp's to_float), so evaluation, compensation and
/// the file can never disagree.</summary>
public abstract class GgufRowsLinear : SolvedLinear
{
    public abstract GgmlType Type { get; }
    public override string Kind => "gguf";
    public override double PaperBits => GgmlTypeInfo.Of(Type).BitsPerWeight;

    /// <summary>The llama.cpp bytes of rows [first, first + count).</summary>
    public abstract byte[] EncodeRows(long first, long count);

    public override Tensor Dequantize(ScalarType dtype = ScalarType.Float32)
    {
        long m = OutFeatures, n = InFeatures;
        long rows = Math.Max(1, (16L << 20) / Math.Max(1, n));
        var codec = BlockCodec.For(Type);
        var w = empty([m, n], dtype);
        for (long r0 = 0; r0 < m; r0 += rows)
        {
            long count = Math.Min(rows, m - r0);
            var values = codec.DequantizeRows(EncodeRows(r0, count), (int)n);
            using var part = tensor(values, [count, n]);
            w.narrow(0, r0, count).copy_(part);
        }
        return w;
    }

    /// <summary>In a safetensors package the blocks travel as raw bytes [out, row bytes].</summary>
    public override void Pack(IDictionary<string, Tensor> tensors, string prefix)
    {
        int rowBytes = (int)GgmlTypeInfo.Of(Type).RowBytes(InFeatures);
        tensors[prefix + ".gguf_blocks"] = tensor(EncodeRows(0, OutFeatures), [OutFeatures, rowBytes]);
    }
}
