using DotQuant.Engine.Calibration;
using DotQuant.Runtime;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.IO;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Quantizers;
using DotQuant.Engine.Rotation;
using DotQuant.Engine.Torch;
using static TorchSharp.torch;

namespace DotQuant.Engine.Distributed;

/// <summary>One shard of a distributed run, on a worker: the model memory-mapped from the worker's own
/// copy of the checkpoint (rotated first when the manifest asks for QuaRot, as the coordinator does),
/// the shard's stream, and the manifest's Hessian source over it. Holds one block at a time.</summary>
public sealed class ShardWorker : IDisposable
{
    readonly Checkpoint _checkpoint;
    readonly QuaRotSource? _rotated;
    readonly DecoderModel _model;
    readonly ISummedHessianSource _source;
    readonly ActivationStream _stream;
    readonly ForwardContexts _contexts;
    readonly HashSet<string> _planned;
    readonly RunPlan _plan;
    readonly string _scratch;
    DecoderBlock? _block;
    BlockWork? _work;

    /// <param name="m">The manifest, with its model path as the worker sees it.</param>
    /// <param name="sequences">The shard's calibration sequences (token ids).</param>
    /// <param name="scratch">A folder of the worker's own (QuaRot's rotated copy).</param>
    /// <param name="restore">A folder <see cref="SaveState"/> wrote (the shard's state at
    /// <paramref name="nextBlock"/>'s input), or null to embed the sequences (block 0).</param>
    /// <param name="firstSequence">The number of the shard's first sequence in the run.</param>
    public ShardWorker(QuantManifest m, IReadOnlyList<long[]> sequences, string scratch, string? restore = null, int nextBlock = 0, int firstSequence = 0, CancellationToken ct = default)
    {
        _scratch = scratch;
        Directory.CreateDirectory(scratch);
        var q = m.Quantize;
        var config = ModelConfig.Load(m.ModelPath);
        _checkpoint = Checkpoint.Open(m.ModelPath);
        try
        {
            if (q.Rotation is { } rotation)
                _rotated = QuaRot.Apply(config, _checkpoint, rotation, Path.Combine(scratch, "rotated"), ct);
            _model = ModelLoader.Open(_rotated?.Config ?? config, _rotated is null ? _checkpoint : _rotated);
            var plan = _plan = RunPlan.Create(q, m.Output, _model);
            _planned = plan.Linears.Where(l => l.Options is not null).Select(l => l.Linear.Name).ToHashSet(StringComparer.Ordinal);
            var shard = m with { Calibration = m.Calibration! with { Samples = sequences.Count }, Evaluate = null };
            var (limit, source) = MemoryPlan.Available();
            Memory = MemoryPlan.Predict(shard, plan, _model, limit, source);
            NativeHeap.Sizes(Memory.BatchActivation, Memory.LargestForwardTemporary + (1L << 20));
            _source = HessianSources.For(q, staged: Memory.Stages > 0, firstSequence) as ISummedHessianSource
                      ?? throw new DotQuantException(ErrorCodes.ManifestValue, "round-to-nearest needs no calibration, so no workers", m.Path);
            var storage = m.Calibration!.Bf16Stream ? ScalarType.BFloat16 : ScalarType.Float32;
            NativeHeap.Forward();
            if (restore is null) _stream = ActivationStream.Embed(_model, sequences, storage);
            else
            {
                _stream = ActivationStream.Load(Path.Combine(restore, StreamFile), "xq", sequences, storage);
                _source.Restore(restore, sequences, nextBlock);
            }
            _contexts = new ForwardContexts(_model);
        }
        catch
        {
            _stream?.Dispose();
            _model?.Dispose();
            _rotated?.Dispose();
            _checkpoint.Dispose();
            throw;
        }
    }

    /// <summary>Takes shard <paramref name="shard"/> of <paramref name="job"/> after checking that this
    /// worker computes what the coordinator would: the same engine version, numerics key and model files
    /// (DQ0186 naming the first difference).</summary>
    public static ShardWorker Open(ShardJob job, int shard, string scratch, string? restore = null, int nextBlock = 0, FileDigests? digests = null, CancellationToken ct = default)
    {
        string? mismatch = Mismatch(job, digests);
        if (mismatch is not null) throw new DotQuantException(ErrorCodes.ClusterMismatch, mismatch, job.ModelPath);
        var m = ManifestParser.ParseSettings(job.ManifestText, job.ManifestPath) with { ModelPath = job.ModelPath };
        return new ShardWorker(m, job.Plan.Shards[shard], scratch, restore, nextBlock, job.Plan.FirstSequence(shard), ct);
    }

    /// <summary>The stream's file in a shard's saved state.</summary>
    public const string StreamFile = "stream.safetensors";

    /// <summary>Writes the shard's state between blocks (its stream and what its Hessian source carries,
    /// e.g. GPTAQ's float stream) into <paramref name="folder"/>: what a replacement worker, or a resumed
    /// run, starts the next block from.</summary>
    public void SaveState(string folder)
    {
        if (_block is not null) throw new DotQuantException(ErrorCodes.Internal, $"the shard's state is saved between blocks, not inside block {_block.Index}");
        Directory.CreateDirectory(folder);
        _stream.Save(Path.Combine(folder, StreamFile), "xq");
        _source.Save(folder);
    }

    /// <summary>Why this process may not take a shard of <paramref name="job"/>, or null.</summary>
    public static string? Mismatch(ShardJob job, FileDigests? digests = null)
    {
        if (job.EngineVersion != QuantizeJob.EngineVersion)
            return $"this worker runs DotQuant {QuantizeJob.EngineVersion}, the coordinator {job.EngineVersion}: every member of a run must run the same version";
        string numerics = Numerics.Key(get_num_threads());
        if (numerics != job.Numerics)
            return $"this worker computes with numerics '{numerics}', the coordinator with '{job.Numerics}' (the last bits of a shard's sums depend on them): start the worker with the coordinator's --threads";
        if (!Directory.Exists(job.ModelPath))
            return $"this worker has no model folder {job.ModelPath} (every worker needs the checkpoint at the coordinator's path, or on shared storage)";
        var mine = QuantizeJob.ModelDigests(job.ModelPath, digests);
        foreach (var (file, digest) in job.ModelDigests)
            if (!mine.TryGetValue(file, out var d) || d != digest)
                return $"this worker's checkpoint differs from the coordinator's: {Path.Combine(job.ModelPath, file)} {(d is null ? "is missing" : $"has SHA-256 {d[..12]}…, the coordinator's {digest[..12]}…")}";
        foreach (var file in mine.Keys.Except(job.ModelDigests.Keys))
            return $"this worker's checkpoint differs from the coordinator's: {Path.Combine(job.ModelPath, file)} is not in the coordinator's";
        return null;
    }

    /// <summary>This worker's memory plan: one block plus its shard's streams.</summary>
    public MemoryPlan Memory { get; }
    public long Sequences => _stream.Sequences;
    public long Tokens => _stream.Ids.Sum(b => b.Sum(s => (long)s.Length));
    public int Block => _block?.Index ?? -1;

    public void BeginBlock(int block, CancellationToken ct)
    {
        NativeHeap.PhaseEnded();
        _block?.Dispose();
        _block = _model.LoadBlock(block);
        _work = new BlockWork
        {
            Model = _model, Block = _block, Stream = _stream, Contexts = _contexts, Planned = _planned, Scratch = _scratch, Cancellation = ct,
        };
        NativeHeap.Forward();
        _source.BeginBlock(_work);
    }

    /// <summary>The unscaled sums of the block's group <paramref name="group"/> over this shard (owned by the caller).</summary>
    public StatisticSums GroupSums(int block, int group, CancellationToken ct)
    {
        var work = Current(block, ct);
        NativeHeap.PhaseEnded();
        NativeHeap.Forward();
        var linears = _block!.LinearGroups[group];
        return _source.Accumulate(work, linears, linears.Where(l => _planned.Contains(l.Name)).ToList());
    }

    /// <summary>Linear <paramref name="linear"/> computes with <paramref name="solved"/>'s weight from now on
    /// (<paramref name="solved"/> is consumed). Dequantized once, as fp32: the values a single process
    /// rebuilds for every product, without rebuilding them for each of the shard's batches.</summary>
    public void UseSolved(int block, string linear, SolvedLinear solved)
    {
        using (solved)
        {
            Current(block, default);
            Linear(block, linear).SetWeight(solved.Dequantize());
        }
    }

    /// <summary>Solves <paramref name="tasks"/> in order from <paramref name="statistics"/> (owned here: a
    /// statistic's last user may consume it), as the coordinator would (<see cref="LinearSolve"/>).</summary>
    public IReadOnlyList<LinearSolution> Solve(int block, IReadOnlyList<Tensor> statistics, IReadOnlyList<SolveTask> tasks, bool rtnBaseline, CancellationToken ct)
    {
        var results = new List<LinearSolution>();
        try
        {
            var work = Current(block, ct);
            NativeHeap.PhaseEnded();
            NativeHeap.Solving();
            using var factors = new FactorCache();
            for (int i = 0; i < tasks.Count; i++)
            {
                var t = tasks[i];
                var o = _plan.OptionsFor(t.Linear) ?? throw new DotQuantException(ErrorCodes.Internal, $"{t.Linear} is not planned for quantization on this worker");
                bool lastUser = t.H >= 0 && tasks.Skip(i + 1).All(x => x.H != t.H);
                results.Add(LinearSolve.Run(Linear(block, t.Linear), t.H >= 0 ? statistics[t.H] : null, t.D >= 0 ? statistics[t.D] : null, o, lastUser, factors,
                    rtnBaseline, null, work.Cancellation));
                NativeHeap.PhaseEnded();
            }
            return results;
        }
        catch
        {
            foreach (var r in results) r.Q.Dispose();
            throw;
        }
        finally
        {
            foreach (var t in statistics) t.Dispose();
        }
    }

    NamedLinear Linear(int block, string linear) => _block!.Linears.FirstOrDefault(l => l.Name == linear)
                                                   ?? throw new DotQuantException(ErrorCodes.Internal, $"block {block} has no linear {linear}");

    public void Advance(int block, CancellationToken ct)
    {
        var work = Current(block, ct);
        NativeHeap.Forward();
        if (!_source.AdvanceStream(work)) _stream.Advance(_block!, _contexts, ct);
        _source.EndBlock(work);
        _block!.Dispose();
        _block = null;
        _work = null;
        NativeHeap.PhaseEnded();
    }

    BlockWork Current(int block, CancellationToken ct)
    {
        if (_block is null || _block.Index != block || _work is null)
            throw new DotQuantException(ErrorCodes.Internal, $"the worker holds block {Block}, not block {block}");
        return ct.CanBeCanceled ? new BlockWork
        {
            Model = _work.Model, Block = _work.Block, Stream = _work.Stream, Contexts = _work.Contexts, Planned = _work.Planned, Scratch = _work.Scratch, Cancellation = ct,
        } : _work;
    }

    public void Dispose()
    {
        _block?.Dispose();
        _source.Dispose();
        _stream.Dispose();
        _contexts.Dispose();
        _model.Dispose();
        _rotated?.Dispose();
        _checkpoint.Dispose();
    }
}
