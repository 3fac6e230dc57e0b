using static TorchSharp.torch;

namespace DotQuant.Cluster;

/// <summary>Tensors as byte chunks for grain calls: Orleans refuses a message body above 100 MB
/// (MessagingOptions.MaxMessageBodySize), and down_proj's H on Llama-2-7B is 485 MB. The chunks are the
/// tensor's bytes in order; the receiver rebuilds the tensor bit for bit.</summary>
public static class TensorChunks
{
    /// <summary>Well under the 100 MB limit, large enough that a call's overhead is negligible.</summary>
    public const int ChunkBytes = 16 << 20;

    public static TensorHeader Header(Tensor t)
    {
        long bytes = t.NumberOfElements * t.ElementSize;
        return new TensorHeader(t.dtype.ToString(), t.shape, bytes, (int)Math.Max(1, (bytes + ChunkBytes - 1) / ChunkBytes));
    }

    /// <summary>Chunk <paramref name="index"/> of a contiguous CPU tensor.</summary>
    public static byte[] Chunk(Tensor t, int index)
    {
        var all = t.bytes;
        long start = (long)index * ChunkBytes;
        if (start > all.Length || (start == all.Length && all.Length > 0)) throw new ArgumentOutOfRangeException(nameof(index));
        int length = (int)Math.Min(ChunkBytes, all.Length - start);
        return all.Slice((int)start, length).ToArray();
    }

    /// <summary>Every chunk of a contiguous CPU tensor, in order.</summary>
    public static byte[][] All(Tensor t) => Enumerable.Range(0, Header(t).Chunks).Select(c => Chunk(t, c)).ToArray();

    /// <summary>An empty tensor of the header's dtype and shape, filled by <see cref="Write"/>.</summary>
    public static Tensor Allocate(TensorHeader h)
    {
        var dtype = Enum.Parse<ScalarType>(h.DType);
        var t = empty(h.Shape, dtype);
        if (t.NumberOfElements * t.ElementSize != h.Bytes)
        {
            t.Dispose();
            throw new InvalidDataException($"a tensor of {h.DType}[{string.Join(",", h.Shape)}] is not {h.Bytes} bytes");
        }
        return t;
    }

    public static void Write(Tensor t, int index, byte[] chunk)
    {
        var all = t.bytes;
        long start = (long)index * ChunkBytes;
        if (start + chunk.Length > all.Length) throw new InvalidDataException($"chunk {index} ({chunk.Length} bytes) runs past the tensor's {all.Length} bytes");
        chunk.CopyTo(all.Slice((int)start, chunk.Length));
    }
}
