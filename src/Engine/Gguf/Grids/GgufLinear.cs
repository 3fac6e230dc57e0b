using DotQuant.Engine.Gguf.Blocks;
using DotQuant.Engine.Quantizers;
using static TorchSharp.torch;

namespace DotQuant.Engine.Gguf.Grids;

/// <summary>A linear solved on a GGUF block grid: codes [out, in] with each block's d and m (fp16
/// values), encoded row by row into exactly the bytes llama.cpp reads.</summary>
public sealed class GgufLinear(GgmlType type, Tensor codes, Tensor d16, Tensor m16, Tensor gIdx) : GgufRowsLinear
{
    public override GgmlType Type => type;
    /// <summary>Codes [out, in] (uint8; Q8_0's signed codes shifted by 128).</summary>
    public Tensor Codes => codes;
    /// <summary>Per block: d [blocks, out] and m [blocks, out] (zero for symmetric types), fp16-exact.</summary>
    public Tensor D => d16;
    public Tensor M => m16;

    public override long OutFeatures => codes.shape[0];
    public override long InFeatures => codes.shape[1];

    /// <summary>The llama.cpp bytes of rows [first, first + count).</summary>
    public override byte[] EncodeRows(long first, long count)
    {
        var codec = (LegacyCodec)BlockCodec.For(type);
        int n = (int)InFeatures, blocks = n / 32, size = codec.Info.TypeSize;
        var bytes = new byte[count * blocks * size];
        using var c = codes.narrow(0, first, count).contiguous();
        using var dT = d16.narrow(1, first, count).t().contiguous();
        using var mT = m16.narrow(1, first, count).t().contiguous();
        var all = c.data<byte>().ToArray();
        var ds = dT.data<float>().ToArray();
        var ms = mT.data<float>().ToArray();
        Span<byte> block = stackalloc byte[32];
        for (int r = 0; r < count; r++)
            for (int b = 0; b < blocks; b++)
            {
                var src = all.AsSpan(r * n + b * 32, 32);
                if (type == GgmlType.Q8_0)
                    for (int j = 0; j < 32; j++) block[j] = (byte)(src[j] - 128);
                else src.CopyTo(block);
                codec.EncodeBlock(block, ds[r * blocks + b], ms[r * blocks + b], bytes.AsSpan((r * blocks + b) * size, size));
            }
        return bytes;
    }

    public override void Dispose()
    {
        codes.Dispose(); d16.Dispose(); m16.Dispose(); gIdx.Dispose();
    }
}
