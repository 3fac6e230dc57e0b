using static TorchSharp.torch;

namespace DotQuant.Engine.Models;

/// <summary>Preallocated key/value cache for incremental decoding: per block, K and V of shape
/// [B, KV heads, capacity, head dim]. <see cref="Length"/> advances after a whole forward.</summary>
public sealed class KvCache : IDisposable
{
    readonly Tensor[] _keys, _values;
    public long Length { get; private set; }
    public long Capacity { get; }

    public KvCache(int blocks, long batch, int kvHeads, long capacity, int headDim)
    {
        Capacity = capacity;
        _keys = new Tensor[blocks];
        _values = new Tensor[blocks];
        for (int i = 0; i < blocks; i++)
        {
            _keys[i] = zeros(batch, kvHeads, capacity, headDim).DetachFromDisposeScope();
            _values[i] = zeros(batch, kvHeads, capacity, headDim).DetachFromDisposeScope();
        }
    }

    /// <summary>Writes this step's k, v [B, KVH, T, D] for a block and returns views of everything so far.</summary>
    public (Tensor K, Tensor V) Append(int block, Tensor k, Tensor v)
    {
        long t = k.shape[2];
        if (Length + t > Capacity)
            throw new InvalidOperationException($"KV cache capacity {Capacity} exceeded");
        _keys[block].narrow(2, Length, t).copy_(k);
        _values[block].narrow(2, Length, t).copy_(v);
        return (_keys[block].narrow(2, 0, Length + t), _values[block].narrow(2, 0, Length + t));
    }

    public void Advance(long tokens) => Length += tokens;

    public void Dispose()
    {
        foreach (var t in _keys) t.Dispose();
        foreach (var t in _values) t.Dispose();
    }
}
