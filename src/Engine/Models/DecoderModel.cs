using DotQuant.Engine.IO;
using static TorchSharp.torch;

namespace DotQuant.Engine.Models;

/// <summary>What a forward call shares across blocks: rotary tables for the positions being
/// computed, the attention mask, and the KV cache when decoding incrementally.</summary>
public sealed class ForwardContext : IDisposable
{
    public required long PastLength { get; init; }
    public required long Length { get; init; }
    public required Tensor Cos { get; init; }
    public required Tensor Sin { get; init; }
    /// <summary>Boolean mask [T, past+T] (true = attend), or null when plain causal attention applies.</summary>
    public Tensor? Mask { get; init; }
    public KvCache? Cache { get; init; }

    public void Dispose()
    {
        Cos.Dispose();
        Sin.Dispose();
        Mask?.Dispose();
    }
}

/// <summary>Called with the input of each linear before it runs (calibration statistics).</summary>
public delegate void LinearInputObserver(NamedLinear linear, Tensor input);

/// <summary>The architecture adapter contract: embeddings, blocks with named linears, final
/// norm and head, and a per-block forward. The calibration pipeline and evaluation use only
/// this, so a new family (OPT, GPT-2) is one more subclass.</summary>
public abstract class DecoderModel : IDisposable
{
    public abstract ModelConfig Config { get; }
    public abstract int BlockCount { get; }

    /// <summary>Token ids [B, T] (int64) → hidden states [B, T, H] in fp32.</summary>
    public abstract Tensor Embed(Tensor ids);

    /// <summary>Runs block <paramref name="index"/> on fp32 hidden states [B, T, H].</summary>
    public abstract Tensor ForwardBlock(int index, Tensor hidden, ForwardContext context, LinearInputObserver? observer = null);

    /// <summary>The block's linears, grouped in true-sequential order (groups sharing an input
    /// together: q/k/v, then o, then gate/up, then down for the Llama family).</summary>
    public abstract IReadOnlyList<IReadOnlyList<NamedLinear>> LinearGroups(int index);

    /// <summary>Final normalisation of hidden states [B, T, H].</summary>
    public abstract Tensor FinalNorm(Tensor hidden);

    /// <summary>The output projection [V, H] in fp32 (tied to embeddings or separate). Caller disposes.</summary>
    public abstract Tensor HeadWeight();

    /// <summary>Builds the per-call context for T new tokens after <paramref name="past"/> cached ones.</summary>
    public abstract ForwardContext CreateContext(long past, long length, KvCache? cache = null);

    public KvCache CreateCache(long batch, long capacity) =>
        new(BlockCount, batch, Config.NumKvHeads, capacity, Config.HeadDim);

    /// <summary>Whole-model forward: ids [B, T] → logits [B, T, V] (fp32). With a cache, appends to it.</summary>
    public Tensor Forward(Tensor ids, KvCache? cache = null)
    {
        using var scope = NewDisposeScope();
        long t = ids.shape[1];
        using var ctx = CreateContext(cache?.Length ?? 0, t, cache);
        var h = Embed(ids);
        for (int i = 0; i < BlockCount; i++)
            h = ForwardBlock(i, h, ctx);
        h = FinalNorm(h);
        using var w = HeadWeight();
        var logits = nn.functional.linear(h, w);
        cache?.Advance(t);
        return scope.MoveToOuter(logits);
    }

    public abstract void Dispose();
}
