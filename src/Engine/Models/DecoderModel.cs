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
    /// <summary>Sliding-window layers' own rotary tables and mask (Gemma), when they differ from the rest.</summary>
    public Tensor? LocalCos { get; init; }
    public Tensor? LocalSin { get; init; }
    public Tensor? LocalMask { get; init; }

    public void Dispose()
    {
        Cos.Dispose();
        Sin.Dispose();
        Mask?.Dispose();
        LocalCos?.Dispose();
        LocalSin?.Dispose();
        LocalMask?.Dispose();
    }
}

/// <summary>Called with the input of each linear before it runs (calibration statistics).</summary>
public delegate void LinearInputObserver(NamedLinear linear, Tensor input);

/// <summary>What a block's forward carries from one true-sequential group to the next: the residual
/// stream and the next group's input (both owned).</summary>
public sealed record BlockState(Tensor Residual, Tensor Input) : IDisposable
{
    public void Dispose()
    {
        Residual.Dispose();
        Input.Dispose();
    }
}

/// <summary>A block's forward in stages, one per true-sequential group: layer-wise calibration keeps each
/// batch's state between groups, so every linear runs once with its solved weight instead of the block
/// being recomputed from its input for every group (about half the forward work).</summary>
public interface IStagedBlock
{
    /// <summary>From the block input to group 0's input.</summary>
    BlockState Begin(Tensor hidden, ForwardContext ctx);
    /// <summary>From group <paramref name="group"/>'s input (through its linears) to the next group's input.</summary>
    BlockState Next(int group, BlockState state, ForwardContext ctx);
    /// <summary>From the last group's input to the block output.</summary>
    Tensor Finish(BlockState state, ForwardContext ctx);
}

/// <summary>A linear of a block by name and shape, known from config.json without loading anything
/// (what planning and the memory plan work from).</summary>
public sealed record LinearSpec(string Name, long OutFeatures, long InFeatures);

/// <summary>One block's weights, materialized: its linears grouped in true-sequential order (groups
/// sharing an input together) and a forward. A calibrator may replace the linears' weights.</summary>
public abstract class DecoderBlock : IDisposable
{
    public abstract int Index { get; }
    public abstract IReadOnlyList<IReadOnlyList<NamedLinear>> LinearGroups { get; }
    public IEnumerable<NamedLinear> Linears => LinearGroups.SelectMany(g => g);

    /// <summary>Runs the block on fp32 hidden states [B, T, H].</summary>
    public abstract Tensor Forward(Tensor hidden, ForwardContext context, LinearInputObserver? observer = null);

    /// <summary>The forward cut at its true-sequential groups; <see cref="Forward"/> is exactly these
    /// stages composed.</summary>
    public abstract IStagedBlock Stages { get; }

    /// <summary>AWQ's scaling points in group order (spec §6.2), or none where the family has no
    /// output-preserving way to fold a scale (the transform then refuses it).</summary>
    public virtual IReadOnlyList<ScalingPoint> ScalingPoints => [];

    public abstract void Dispose();
}

/// <summary>The architecture adapter contract: embeddings, blocks with named linears, final norm
/// and head, bound to a weight source. Blocks are materialized on request (<see cref="LoadBlock"/>),
/// so calibration and evaluation hold one block at a time whatever the depth; an app that generates
/// text makes the model resident once (<see cref="MakeResident"/>). A new family (OPT, GPT-2) is one
/// more subclass.</summary>
public abstract class DecoderModel : IDisposable
{
    readonly IDisposable? _ownedSource;
    DecoderBlock[]? _resident;

    protected DecoderModel(IWeightSource weights, bool ownsSource)
    {
        Weights = weights;
        _ownedSource = ownsSource ? weights as IDisposable : null;
    }

    public IWeightSource Weights { get; }
    public abstract ModelConfig Config { get; }
    public int BlockCount => Config.NumLayers;
    public bool IsResident => _resident is not null;

    /// <summary>The name prefix of block <paramref name="index"/>'s tensors (e.g. <c>model.layers.3.</c>).</summary>
    public abstract string BlockPrefix(int index);

    /// <summary>The source tensors of one block, in the source's order: what a run writes after solving it.</summary>
    public IEnumerable<string> BlockTensorNames(int index)
    {
        string prefix = BlockPrefix(index);
        return Weights.Names.Where(n => n.StartsWith(prefix, StringComparison.Ordinal));
    }

    /// <summary>The source tensors outside every block (embeddings, final norm, head), in the source's
    /// order: what a run writes after the last block. With <see cref="BlockTensorNames"/>, the one order
    /// every writer receives tensors in (a GGUF writer declares it before the first block).</summary>
    public IEnumerable<string> OutsideTensorNames()
    {
        var prefixes = Enumerable.Range(0, BlockCount).Select(BlockPrefix).ToList();
        return Weights.Names.Where(n => !prefixes.Any(p => n.StartsWith(p, StringComparison.Ordinal)));
    }

    /// <summary>The block's linears by name and shape, in true-sequential groups.</summary>
    public abstract IReadOnlyList<IReadOnlyList<LinearSpec>> LinearLayout(int index);

    /// <summary>A fresh copy of block <paramref name="index"/>'s weights from the source (the caller
    /// owns it and may change its weights).</summary>
    public abstract DecoderBlock LoadBlock(int index);

    /// <summary>The family's blocks have AWQ scaling points (<see cref="DecoderBlock.ScalingPoints"/>).</summary>
    public virtual bool HasScalingPoints => false;

    /// <summary>Block <paramref name="index"/> for reading: the resident one, or loaded for the lease.</summary>
    public BlockLease Block(int index) =>
        _resident is not null ? new BlockLease(_resident[index], false) : new BlockLease(LoadBlock(index), true);

    /// <summary>Loads every block once and keeps it (generation, small models in tests).</summary>
    public void MakeResident()
    {
        if (_resident is not null) return;
        var blocks = new DecoderBlock[BlockCount];
        try
        {
            for (int i = 0; i < blocks.Length; i++) blocks[i] = LoadBlock(i);
        }
        catch
        {
            foreach (var b in blocks) b?.Dispose();
            throw;
        }
        _resident = blocks;
        OnResident();
    }

    /// <summary>Lets a subclass keep its tables (embeddings, head) in memory once resident.</summary>
    protected virtual void OnResident() { }

    /// <summary>Token ids [B, T] (int64) at positions past..past+T−1 → hidden states [B, T, H] in fp32
    /// (positions matter to families with learned position embeddings, GPT-2).</summary>
    public abstract Tensor Embed(Tensor ids, long past = 0);

    /// <summary>Final normalisation of hidden states [B, T, H].</summary>
    public abstract Tensor FinalNorm(Tensor hidden);

    /// <summary>The output projection [V, H] in fp32 (tied to embeddings or separate). Caller disposes.</summary>
    public abstract Tensor HeadWeight();

    /// <summary>The stored tensor <see cref="HeadWeight"/> reads: lm_head.weight, or the embedding when tied.</summary>
    public abstract string HeadName { get; }

    /// <summary>Logits from final-normalised hidden states and <see cref="HeadWeight"/> (a family may cap
    /// them, as Gemma 2 does).</summary>
    public virtual Tensor Logits(Tensor normedHidden, Tensor head) => nn.functional.linear(normedHidden, head);

    /// <summary>Builds the per-call context for T new tokens after <paramref name="past"/> cached ones.</summary>
    public abstract ForwardContext CreateContext(long past, long length, KvCache? cache = null);

    public KvCache CreateCache(long batch, long capacity) =>
        new(BlockCount, batch, Config.NumKvHeads, capacity, Config.HeadDim);

    /// <summary>Whole-model forward: ids [B, T] → logits [B, T, V] (fp32). With a cache, appends to it.
    /// Block by block from the source unless the model is resident.</summary>
    public Tensor Forward(Tensor ids, KvCache? cache = null)
    {
        using var scope = NewDisposeScope();
        long t = ids.shape[1];
        using var ctx = CreateContext(cache?.Length ?? 0, t, cache);
        var h = Embed(ids, cache?.Length ?? 0);
        for (int i = 0; i < BlockCount; i++)
        {
            using var block = Block(i);
            h = block.Block.Forward(h, ctx);
        }
        h = FinalNorm(h);
        using var w = HeadWeight();
        var logits = Logits(h, w);
        cache?.Advance(t);
        return scope.MoveToOuter(logits);
    }

    /// <summary>Hands a group's shared input to the observer, once per linear (calibration statistics).</summary>
    protected static void Observe(LinearInputObserver? observer, NamedLinear[] linears, Tensor input)
    {
        if (observer is null) return;
        foreach (var l in linears) observer(l, input);
    }

    protected virtual void DisposeTables() { }

    public void Dispose()
    {
        foreach (var b in _resident ?? []) b.Dispose();
        DisposeTables();
        _ownedSource?.Dispose();
    }
}

/// <summary>A block borrowed from a resident model or loaded for one use.</summary>
public readonly struct BlockLease(DecoderBlock block, bool owned) : IDisposable
{
    public DecoderBlock Block => block;
    public void Dispose()
    {
        if (owned) block.Dispose();
    }
}
