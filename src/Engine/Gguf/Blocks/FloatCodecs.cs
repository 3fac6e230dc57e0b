using System.Runtime.InteropServices;

namespace DotQuant.Engine.Gguf.Blocks;

public sealed class F32Codec : BlockCodec
{
    public override GgmlType Type => GgmlType.F32;

    public override void Quantize(ReadOnlySpan<float> row, Span<byte> destination)
    {
        CheckLengths(row.Length, destination.Length);
        MemoryMarshal.AsBytes(row).CopyTo(destination);
    }

    public override void Dequantize(ReadOnlySpan<byte> source, Span<float> row)
    {
        CheckLengths(row.Length, source.Length);
        MemoryMarshal.Cast<byte, float>(source).CopyTo(row);
    }
}

public sealed class F16Codec : BlockCodec
{
    public override GgmlType Type => GgmlType.F16;

    public override void Quantize(ReadOnlySpan<float> row, Span<byte> destination)
    {
        CheckLengths(row.Length, destination.Length);
        for (int i = 0; i < row.Length; i++) WriteHalf(destination.Slice(2 * i, 2), row[i]);
    }

    public override void Dequantize(ReadOnlySpan<byte> source, Span<float> row)
    {
        CheckLengths(row.Length, source.Length);
        for (int i = 0; i < row.Length; i++) row[i] = FromHalf(source.Slice(2 * i, 2));
    }
}

/// <summary>bfloat16 as ggml rounds it (ggml_compute_fp32_to_bf16): nearest even, NaN kept quiet.</summary>
public sealed class BF16Codec : BlockCodec
{
    public override GgmlType Type => GgmlType.BF16;

    public static ushort ToBf16(float x)
    {
        uint u = BitConverter.SingleToUInt32Bits(x);
        if ((u & 0x7fffffff) > 0x7f800000) return (ushort)((u >> 16) | 64);
        return (ushort)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
    }

    public override void Quantize(ReadOnlySpan<float> row, Span<byte> destination)
    {
        CheckLengths(row.Length, destination.Length);
        for (int i = 0; i < row.Length; i++)
        {
            ushort b = ToBf16(row[i]);
            destination[2 * i] = (byte)b;
            destination[2 * i + 1] = (byte)(b >> 8);
        }
    }

    public override void Dequantize(ReadOnlySpan<byte> source, Span<float> row)
    {
        CheckLengths(row.Length, source.Length);
        for (int i = 0; i < row.Length; i++)
            row[i] = BitConverter.UInt32BitsToSingle((uint)(source[2 * i] | source[2 * i + 1] << 8) << 16);
    }
}
