using System.Diagnostics;
using DotQuant.Engine.Calibration;
using DotQuant.Runtime;
using DotQuant.Engine.Distributed;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.Quantizers;
using Orleans.Runtime;
using static TorchSharp.torch;

namespace DotQuant.Cluster;

/// <summary>The worker side of <see cref="IShardGrain"/>: a <see cref="ShardWorker"/> on the silo the
/// grain's key names. The heavy calls run on a thread-pool thread (not Orleans' scheduler), one at a
/// time: a grain is not reentrant, so the coordinator's calls to one worker are serialized.</summary>
[Orleans.Placement.PreferLocalPlacement]
public sealed class ShardGrain(ILocalSiloDetails silo, WorkerState state) : Grain, IShardGrain
{
    ShardWorker? _worker;
    string? _runKey;
    StatisticSums? _sums;
    int _sumChunksLeft;
    readonly SortedDictionary<int, Tensor> _inbox = [];
    List<WireLinear>? _outbox;
    int _outboxChunksLeft;

    public override Task OnActivateAsync(CancellationToken ct)
    {
        // The coordinator places each shard on the silo its key names; an activation anywhere else (the
        // silo died and Orleans re-placed the grain) must not pretend to hold that shard.
        if (SiloOf(this.GetPrimaryKeyString()) != silo.SiloAddress.ToParsableString())
            throw new ShardException(ErrorCodes.ClusterWorkerLost, $"the shard {this.GetPrimaryKeyString()} was placed on {silo.SiloAddress}: its worker is gone",
                silo.SiloAddress.ToParsableString());
        return Task.CompletedTask;
    }

    /// <summary>The grain key "SILO|SHARD" of shard <paramref name="shard"/> on <paramref name="silo"/>.</summary>
    public static string Key(string silo, int shard) => $"{silo}|{shard}";
    static string SiloOf(string key) => key[..key.LastIndexOf('|')];
    int ShardIndex => int.Parse(this.GetPrimaryKeyString()[(this.GetPrimaryKeyString().LastIndexOf('|') + 1)..]);

    string Folder(string runKey) => Path.Combine(state.Scratch, $"{runKey}-{ShardIndex}");

    public Task<WorkerInfo> Describe() => Task.FromResult(state.Info(silo.SiloAddress.ToParsableString()));

    public Task<long> Open(ShardMessage job) => Run(() =>
    {
        Release();
        var sw = Stopwatch.StartNew();
        string scratch = Folder(job.RunKey);
        string? restore = job.RestoreBlock >= 0 ? Path.Combine(scratch, "restore") : null;
        _worker = ShardWorker.Open(job.ToJob(state.Models), 0, Path.Combine(scratch, "work"), restore, Math.Max(0, job.RestoreBlock), ct: state.Stopping);
        _runKey = job.RunKey;
        state.Log($"shard {job.Shard}: {_worker.Sequences} sequences, {_worker.Tokens:N0} tokens" +
                  (restore is null ? "" : $", restored at block {job.RestoreBlock}") + $"; {_worker.Memory.Summary()} ({sw.Elapsed.TotalSeconds:F1} s)");
        return _worker.Tokens;
    });

    public Task BeginBlock(int block) => Run(() =>
    {
        Worker.BeginBlock(block, state.Stopping);
        return 0;
    });

    public Task<SumsHeader> ComputeGroupSums(int block, int group) => Run(() =>
    {
        DisposeSums();
        var sw = Stopwatch.StartNew();
        using var computed = Worker.GroupSums(block, group, state.Stopping);
        double seconds = sw.Elapsed.TotalSeconds;
        var names = computed.Tensors.Select(s => s.Name).ToArray();
        var sides = new long[names.Length];
        var sent = new List<(string, Tensor)>();
        try
        {
            for (int i = 0; i < names.Length; i++)
            {
                var t = computed.Take(names[i])!;
                if (!t.is_contiguous()) throw new DotQuantException(ErrorCodes.Internal, "a shard's sums are not contiguous");
                if (SymmetricPacking.Applies(t))
                {
                    sides[i] = t.shape[0];
                    var whole = t;
                    t = SymmetricPacking.Pack(whole);
                    whole.Dispose();
                }
                sent.Add((names[i], t));
            }
        }
        catch
        {
            foreach (var (_, t) in sent) t.Dispose();
            throw;
        }
        _sums = new StatisticSums(sent, computed.Sequences);
        _sumChunksLeft = _sums.Tensors.Sum(s => TensorChunks.Header(s.Sum).Chunks);
        return new SumsHeader(names, _sums.Tensors.Select(s => TensorChunks.Header(s.Sum)).ToArray(), _sums.Sequences, seconds, sides);
    });

    public Task<byte[]> ReadSums(int tensor, int chunk)
    {
        var sums = _sums ?? throw new InvalidOperationException("no sums are kept");
        var t = sums.Tensors[tensor].Sum;
        var data = TensorChunks.Chunk(t, chunk);
        // Every chunk read (in whatever order the coordinator's pipelined calls arrive): the sums are no longer needed here.
        if (--_sumChunksLeft == 0) DisposeSums();
        return Task.FromResult(data);
    }

    public Task PutTensor(int index, TensorHeader header)
    {
        if (_inbox.Remove(index, out var old)) old.Dispose();
        _inbox[index] = TensorChunks.Allocate(header).DetachFromDisposeScope();
        return Task.CompletedTask;
    }

    public Task PutChunk(int index, int chunk, byte[] data)
    {
        TensorChunks.Write(_inbox.GetValueOrDefault(index) ?? throw new InvalidOperationException($"no tensor {index} is being received"), chunk, data);
        return Task.CompletedTask;
    }

    /// <summary>The tensors put so far, 0…count−1, handed over (the inbox is empty after).</summary>
    List<Tensor> TakeInbox(int count)
    {
        bool complete = _inbox.Keys.SequenceEqual(Enumerable.Range(0, count));
        var taken = _inbox.Values.ToList();
        _inbox.Clear();
        if (!complete)
        {
            foreach (var t in taken) t.Dispose();
            throw new InvalidOperationException($"{taken.Count} tensors were put, {count} expected");
        }
        return taken;
    }

    public Task UseSolved(int block, string linear, WireHeader wire) => Run(() =>
    {
        using var w = WireMessages.Open(wire, TakeInbox(wire.Names.Length));
        Worker.UseSolved(block, linear, SolvedLinearWire.Decode(w));
        return 0;
    });

    public Task<SolvedHeader[]> Solve(int block, SolveCall call) => Run(() =>
    {
        DisposeOutbox();
        int count = call.H.Concat(call.D).DefaultIfEmpty(-1).Max() + 1;
        var statistics = TakeInbox(count);
        var tasks = call.Linears.Select((l, i) => new SolveTask(l, call.H[i], call.D[i])).ToList();
        var clock = Stopwatch.StartNew();
        var solved = Worker.Solve(block, statistics, tasks, call.RtnBaseline, state.Stopping);
        double solving = clock.Elapsed.TotalSeconds;
        _outbox = [];
        var headers = new List<SolvedHeader>();
        foreach (var (task, s) in tasks.Zip(solved))
        {
            using (s.Q)
            {
                var wire = SolvedLinearWire.Encode(s.Q);
                _outbox.Add(wire);
                headers.Add(new SolvedHeader(task.Linear, WireMessages.Header(wire), s.RtnLoss, s.Seconds, s.Warnings.ToArray()));
            }
        }
        _outboxChunksLeft = headers.Sum(h => h.Wire.Tensors.Sum(t => t.Chunks));
        state.Log($"block {block}: solved {string.Join(", ", tasks.Select(t => t.Linear))} in {solving:F2} s ({string.Join(", ", solved.Select(x => x.Seconds.ToString("F2")))}), encoded in {clock.Elapsed.TotalSeconds - solving:F2} s");
        return headers.ToArray();
    });

    public Task<byte[]> ReadSolved(int linear, int tensor, int chunk)
    {
        var outbox = _outbox ?? throw new InvalidOperationException("no solved linears are kept");
        var data = TensorChunks.Chunk(outbox[linear].Tensors[tensor].Tensor, chunk);
        if (--_outboxChunksLeft == 0) DisposeOutbox();
        return Task.FromResult(data);
    }

    void DisposeOutbox()
    {
        foreach (var w in _outbox ?? []) w.Dispose();
        _outbox = null;
    }

    public Task Advance(int block) => Run(() =>
    {
        Worker.Advance(block, state.Stopping);
        return 0;
    });

    public Task<StateFile[]> SaveState() => Run(() =>
    {
        string folder = Path.Combine(Folder(_runKey!), "state");
        if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        Worker.SaveState(folder);
        return Directory.GetFiles(folder).Order(StringComparer.Ordinal).Select(f => new StateFile(Path.GetFileName(f), new FileInfo(f).Length)).ToArray();
    });

    public async Task<byte[]> ReadStateFile(string name, long offset, int count)
    {
        string path = Path.Combine(Folder(_runKey!), "state", Path.GetFileName(name));
        await using var f = File.OpenRead(path);
        f.Position = offset;
        var data = new byte[Math.Min(count, Math.Max(0, f.Length - offset))];
        await f.ReadExactlyAsync(data);
        return data;
    }

    public Task ClearState(string runKey)
    {
        string folder = Path.Combine(Folder(runKey), "restore");
        if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        return Task.CompletedTask;
    }

    public async Task PutStateFile(string runKey, string name, long offset, byte[] data)
    {
        string folder = Path.Combine(Folder(runKey), "restore");
        Directory.CreateDirectory(folder);
        await using var f = new FileStream(Path.Combine(folder, Path.GetFileName(name)), offset == 0 ? FileMode.Create : FileMode.Open, FileAccess.Write);
        f.Position = offset;
        await f.WriteAsync(data);
    }

    public Task Close()
    {
        Release();
        DeactivateOnIdle();
        return Task.CompletedTask;
    }

    public override Task OnDeactivateAsync(DeactivationReason reason, CancellationToken ct)
    {
        Release();
        return Task.CompletedTask;
    }

    ShardWorker Worker => _worker ?? throw new DotQuantException(ErrorCodes.ClusterWorkerLost, "this worker holds no shard (it was restarted or closed)");

    void DisposeSums()
    {
        _sums?.Dispose();
        _sums = null;
    }

    void Release()
    {
        DisposeSums();
        DisposeOutbox();
        foreach (var t in _inbox.Values) t.Dispose();
        _inbox.Clear();
        _worker?.Dispose();
        _worker = null;
    }

    /// <summary>Runs engine work off Orleans' scheduler, on one thread for the whole call.
    /// A DQ diagnostic goes back to the coordinator with its code and this worker's address.</summary>
    Task<T> Run<T>(Func<T> work) => Task.Run(() =>
    {
        try
        {
            // No dispose scope around the call: what a call creates to keep (a block, states, a restored
            // stream) must outlive it, as in a single process; the engine scopes its own temporaries.
            return work();
        }
        catch (DotQuantException e)
        {
            throw new ShardException(e.Code, e.Message, silo.SiloAddress.ToParsableString());
        }
    });
}

/// <summary>What a worker process shares with its grains: identity, scratch folder, log, stop signal.</summary>
public sealed class WorkerState(string scratch, string? models, Action<string> log, CancellationToken stopping)
{
    public string Scratch => scratch;
    /// <summary>Where this worker keeps models (a run's model folder NAME is read from here), or null for the coordinator's paths.</summary>
    public string? Models => models;
    public CancellationToken Stopping => stopping;
    public void Log(string line) => log(line);

    public WorkerInfo Info(string silo) => new(silo, Environment.MachineName, Environment.ProcessId, QuantizeJob.EngineVersion,
        Numerics.Key(get_num_threads()));
}
