using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Engine.Calibration;

/// <summary>The calibration sequences' hidden states at the input of the current block, in batches
/// of equal-length sequences (~8k tokens each). Stored in fp32, or bf16 when
/// <c>calibration.stream_dtype: bf16</c> halves the memory (every use upcasts to fp32).</summary>
public sealed class ActivationStream : IDisposable
{
    public const long TokensPerBatch = 8192;

    readonly List<Tensor> _batches;

    ActivationStream(List<Tensor> batches, IReadOnlyList<long[][]> ids, ScalarType storage)
    {
        _batches = batches;
        Ids = ids;
        Storage = storage;
    }

    /// <summary>Token ids per batch and sequence (labels for the output-adaptive Hessian).</summary>
    public IReadOnlyList<long[][]> Ids { get; }
    public ScalarType Storage { get; }
    public int Count => _batches.Count;
    public long Sequences => Ids.Sum(b => (long)b.Length);
    public long Bytes => _batches.Sum(t => t.NumberOfElements * t.ElementSize);

    /// <summary>Embeds the sequences: the stream at the input of block 0.</summary>
    public static ActivationStream Embed(DecoderModel model, IReadOnlyList<long[]> sequences, ScalarType storage = ScalarType.Float32)
    {
        var ids = Batch(sequences).Select(b => b.ToArray()).ToList();
        var batches = new List<Tensor>();
        try
        {
            foreach (var b in ids)
            {
                using var scope = NewDisposeScope();
                using var t = tensor(b.SelectMany(s => s).ToArray(), [b.Length, b[0].Length]);
                batches.Add(Store(model.Embed(t), storage).DetachFromDisposeScope());
            }
        }
        catch
        {
            foreach (var t in batches) t.Dispose();
            throw;
        }
        return new ActivationStream(batches, ids, storage);
    }

    /// <summary>Batch <paramref name="i"/> in fp32 (the caller disposes the handle).</summary>
    public Tensor Input(int i) => _batches[i].dtype == ScalarType.Float32 ? _batches[i].alias() : _batches[i].to(ScalarType.Float32);

    /// <summary>A copy with its own tensors (GPTAQ's float stream starts as the quantized one).</summary>
    public ActivationStream Clone() => new(_batches.Select(t => t.clone().DetachFromDisposeScope()).ToList(), Ids, Storage);

    /// <summary>Moves every batch through <paramref name="block"/>.</summary>
    public void Advance(DecoderBlock block, ForwardContexts contexts, CancellationToken ct = default)
    {
        for (int i = 0; i < _batches.Count; i++)
        {
            ct.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            using var x = Input(i);
            var next = Store(block.Forward(x, contexts.For(x.shape[1])), Storage).DetachFromDisposeScope();
            _batches[i].Dispose();
            _batches[i] = next;
        }
    }

    /// <summary>Batch <paramref name="i"/> becomes <paramref name="output"/> (a block's output computed
    /// elsewhere, e.g. by staged calibration), stored as the stream stores.</summary>
    public void Replace(int i, Tensor output)
    {
        using var scope = NewDisposeScope();
        var next = output.dtype == Storage ? output.alias() : output.to(Storage);    // the caller keeps its handle
        _batches[i].Dispose();
        _batches[i] = next.DetachFromDisposeScope();
    }

    static Tensor Store(Tensor x, ScalarType storage) => x.dtype == storage ? x : x.to(storage);

    /// <summary>Writes the batches to <paramref name="path"/> (temp file + rename): a resume point.</summary>
    public void Save(string path, string prefix)
    {
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        for (int i = 0; i < _batches.Count; i++) tensors[$"{prefix}.{i:D6}"] = _batches[i];
        SafeTensorsWriter.Write(path, tensors);
    }

    /// <summary>A stream saved by <see cref="Save"/> with the same batching.</summary>
    public static ActivationStream Load(string path, string prefix, IReadOnlyList<long[]> sequences, ScalarType storage)
    {
        var ids = Batch(sequences).Select(b => b.ToArray()).ToList();
        using var file = SafeTensorsFile.Open(path);
        var batches = new List<Tensor>();
        for (int i = 0; i < ids.Count; i++)
        {
            var t = file.Load($"{prefix}.{i:D6}");
            if (t.dtype != storage || t.shape[0] != ids[i].Length || t.shape[1] != ids[i][0].Length)
            {
                t.Dispose();
                foreach (var b in batches) b.Dispose();
                throw new InvalidDataException($"{path}: batch {i} does not match the calibration set");
            }
            batches.Add(t.DetachFromDisposeScope());      // the stream outlives any scope it is loaded in
        }
        return new ActivationStream(batches, ids, storage);
    }

    /// <summary>How many sequences each batch of <paramref name="sequences"/> holds, in order (a
    /// distributed run shards on these boundaries, so every batch is the one a single process forms).</summary>
    public static IReadOnlyList<int> BatchSizes(IReadOnlyList<long[]> sequences) => Batch(sequences).Select(b => b.Count).ToList();

    /// <summary>Consecutive sequences of equal length, up to ~8k tokens per batch.</summary>
    static List<List<long[]>> Batch(IReadOnlyList<long[]> sequences)
    {
        var batches = new List<List<long[]>>();
        foreach (var s in sequences)
        {
            var last = batches.Count > 0 ? batches[^1] : null;
            if (last is not null && last[0].Length == s.Length && (last.Count + 1) * (long)s.Length <= TokensPerBatch)
                last.Add(s);
            else
                batches.Add([s]);
        }
        return batches;
    }

    public void Dispose()
    {
        foreach (var t in _batches) t.Dispose();
        _batches.Clear();
    }
}

/// <summary>Rotary tables and masks per sequence length, shared by every block of a run.</summary>
public sealed class ForwardContexts(DecoderModel model) : IDisposable
{
    readonly Dictionary<long, ForwardContext> _byLength = new();

    public ForwardContext For(long length) =>
        _byLength.TryGetValue(length, out var c) ? c : _byLength[length] = model.CreateContext(0, length);

    public void Dispose()
    {
        foreach (var c in _byLength.Values) c.Dispose();
        _byLength.Clear();
    }
}
