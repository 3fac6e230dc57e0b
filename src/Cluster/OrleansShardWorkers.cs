using DotQuant.Engine.Diagnostics;
using DotQuant.Engine.Distributed;
using static TorchSharp.torch;

namespace DotQuant.Cluster;

/// <summary><see cref="IShardWorkers"/> over Orleans. Each call goes to every shard at once; the shard sums
/// come back in chunks and are added in shard order (<see cref="ShardSums"/>), one shard's tensors at a time.
/// A shard whose worker is gone (killed, left: Orleans' membership breaks the calls to it) is handed to
/// another worker, which starts from the shard's state saved after the last block (or embeds it, in block
/// 0), loads the current block, receives the weights solved so far and repeats the failed call: the run
/// then writes what an undisturbed run writes.</summary>
sealed class OrleansShardWorkers(OrleansCluster cluster, ShardJob job) : IShardWorkers
{
    const int StateChunk = TensorChunks.ChunkBytes;
    int _block = -1;
    string? _states;                 // the shards' states at the current block's input (null: embed)
    int _statesBlock;
    Func<IEnumerable<(string Linear, Tensor Weight)>> _solvedSoFar = () => [];

    public int Shards => cluster.Count;

    public void Open(CancellationToken ct)
    {
        var tokens = All(k => OpenShard(k, ct), "opening its shard", ct);
        cluster.Traffic.Tokens = tokens;
    }

    long OpenShard(int k, CancellationToken ct)
    {
        if (_states is null) return cluster.Call(k, g => g.Open(ShardMessage.Of(job, k)), "opening its shard", ct);
        PutState(k, ShardStates.Folder(_states, k), ct);
        return cluster.Call(k, g => g.Open(ShardMessage.Of(job, k, _statesBlock)), "restoring its shard", ct);
    }

    public void BeginBlock(int block, Func<IEnumerable<(string Linear, Tensor Weight)>> solvedSoFar, CancellationToken ct)
    {
        _block = block;
        _solvedSoFar = solvedSoFar;
        All(k => { cluster.Call(k, g => g.BeginBlock(block), $"loading block {block}", ct); return 0; }, $"loading block {block}", ct);
    }

    public (Tensor H, Tensor? D, int Sequences) GroupSums(int block, int group, CancellationToken ct)
    {
        string during = $"computing block {block}'s group {group} statistics";
        var headers = All(k => cluster.Call(k, g => g.ComputeGroupSums(block, group), during, ct), during, ct);
        var traffic = cluster.Traffic;
        lock (traffic)
        {
            for (int k = 0; k < headers.Length; k++)
                traffic.ComputeSeconds[k] = traffic.ComputeSeconds.GetValueOrDefault(k) + headers[k].Seconds;
            traffic.WaitingOnSlowest += headers.Max(h => h.Seconds) - headers.Min(h => h.Seconds);
        }
        using var sums = new ShardSums();
        for (int k = 0; k < headers.Length; k++)
        {
            int shard = k;
            // Read back in shard order; a worker lost now computes its sums again on the one that takes over.
            var (h, d, n) = OnShard(shard, () =>
            {
                var header = headers[shard];
                var th = Receive(shard, 0, header.H, during, ct);
                try
                {
                    var td = header.D is { } dh ? Receive(shard, 1, dh, during, ct) : null;
                    return (th, td, header.Sequences);
                }
                catch
                {
                    th.Dispose();
                    throw;
                }
            }, () => headers[shard] = cluster.Call(shard, g => g.ComputeGroupSums(block, group), during, ct), ct);
            using (h)
            using (d)
                sums.Add(h, d, n);
        }
        return sums.Take();
    }

    Tensor Receive(int shard, int tensor, TensorHeader header, string during, CancellationToken ct)
    {
        var t = TensorChunks.Allocate(header);
        try
        {
            for (int c = 0; c < header.Chunks; c++)
            {
                int chunk = c;
                var data = cluster.Call(shard, g => g.ReadSums(tensor, chunk), during, ct);
                TensorChunks.Write(t, chunk, data);
                lock (cluster.Traffic) cluster.Traffic.BytesReceived += data.Length;
            }
            return t;
        }
        catch
        {
            t.Dispose();
            throw;
        }
    }

    public void UseWeight(int block, string linear, Tensor weight, CancellationToken ct)
    {
        using var w = weight.contiguous();
        var header = TensorChunks.Header(w);
        var chunks = TensorChunks.All(w);
        All(k => { Send(k, block, linear, header, chunks, ct); return 0; }, $"receiving {linear}'s solved weight", ct);
    }

    void Send(int k, int block, string linear, TensorHeader header, byte[][] chunks, CancellationToken ct) =>
        cluster.Call(k, async g =>
        {
            await g.BeginWeight(block, linear, header);
            for (int c = 0; c < chunks.Length; c++) await g.WriteWeight(c, chunks[c]);
            await g.EndWeight();
            lock (cluster.Traffic) cluster.Traffic.BytesSent += header.Bytes;
        }, $"receiving {linear}'s solved weight", ct);

    public void Advance(int block, string states, CancellationToken ct)
    {
        All(k =>
        {
            cluster.Call(k, g => g.Advance(block), $"advancing its stream through block {block}", ct);
            string temp = ShardStates.Folder(states, k) + ".tmp";
            if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
            Directory.CreateDirectory(temp);
            var files = cluster.Call(k, g => g.SaveState(), $"saving its state after block {block}", ct);
            foreach (var f in files)
            {
                using var output = File.Create(Path.Combine(temp, Path.GetFileName(f.Name)));
                for (long at = 0; at < f.Length; at += StateChunk)
                {
                    long offset = at;
                    var data = cluster.Call(k, g => g.ReadStateFile(f.Name, offset, StateChunk), $"sending its state after block {block}", ct);
                    output.Write(data);
                    lock (cluster.Traffic) cluster.Traffic.StateBytes += data.Length;
                }
            }
            ShardStates.Publish(temp, states, k);
            return 0;
        }, $"advancing block {block}", ct);
        _states = states;
        _statesBlock = block + 1;
        _block = -1;
    }

    public void Restore(string states, int nextBlock, CancellationToken ct)
    {
        _states = states;
        _statesBlock = nextBlock;
        All(k => OpenShard(k, ct), "restoring its shard", ct);
    }

    void PutState(int k, string folder, CancellationToken ct)
    {
        cluster.Call(k, g => g.ClearState(job.RunKey), "receiving its state", ct);
        foreach (var file in Directory.GetFiles(folder).Order(StringComparer.Ordinal))
        {
            using var input = File.OpenRead(file);
            var buffer = new byte[StateChunk];
            long offset = 0;
            int n;
            do
            {
                n = input.Read(buffer, 0, buffer.Length);
                long at = offset;
                var data = buffer[..n];
                cluster.Call(k, g => g.PutStateFile(job.RunKey, Path.GetFileName(file), at, data), "receiving its state", ct);
                offset += n;
                lock (cluster.Traffic) cluster.Traffic.StateBytes += n;
            }
            while (n == buffer.Length);
        }
    }

    /// <summary>Runs <paramref name="work"/> for every shard at once (taking over lost shards), in shard order.</summary>
    T[] All<T>(Func<int, T> work, string during, CancellationToken ct)
    {
        var tasks = Enumerable.Range(0, Shards).Select(k => Task.Run(() => OnShard(k, () => work(k), null, ct), ct)).ToArray();
        try
        {
            return Task.WhenAll(tasks).GetAwaiter().GetResult();
        }
        catch
        {
            foreach (var t in tasks)
                if (t.IsFaulted) throw t.Exception!.InnerException!;
            throw;
        }
    }

    /// <summary>Runs <paramref name="work"/> on shard <paramref name="k"/>; if its worker is lost, hands the
    /// shard to another (<see cref="TakeOver"/>), runs <paramref name="redo"/> (what must be recomputed there
    /// first) and tries again, at most once per worker of the cluster.</summary>
    T OnShard<T>(int k, Func<T> work, Action? redo, CancellationToken ct)
    {
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                return work();
            }
            catch (WorkerLostException lost) when (attempt < Math.Max(3, cluster.Members.Count))
            {
                TakeOver(k, lost, ct);
                redo?.Invoke();
            }
            catch (WorkerLostException lost)
            {
                throw new DotQuantException(ErrorCodes.ClusterWorkerLost, lost.Message + "; shards were taken over too often, giving up");
            }
        }
    }

    /// <summary>How long a takeover may keep trying: right after a worker dies, calls that the cluster
    /// routes through it (e.g. a grain directory partition it owned) fail until membership declares it dead.</summary>
    static readonly TimeSpan TakeoverWindow = TimeSpan.FromSeconds(90);

    void TakeOver(int k, WorkerLostException lost, CancellationToken ct)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var target = cluster.Reassign(k, lost.Silo, ct);
        while (true)
        {
            try
            {
                var member = cluster.Call(k, g => g.Describe(), "taking over a shard", ct);
                OrleansCluster.Admit(member, job);
                OpenShard(k, ct);
                if (_block >= 0)
                {
                    cluster.Call(k, g => g.BeginBlock(_block), $"loading block {_block}", ct);
                    foreach (var (linear, weight) in _solvedSoFar())
                        using (weight)
                        using (var w = weight.contiguous())
                        {
                            var header = TensorChunks.Header(w);
                            Send(k, _block, linear, header, TensorChunks.All(w), ct);
                        }
                }
                lock (cluster.Takeovers)
                    cluster.Takeovers.Add($"{lost.Message}; shard {k} taken over by {member.Silo}" + (_block >= 0 ? $" in block {_block}" : "") + $" ({clock.Elapsed.TotalSeconds:F1} s)");
                return;
            }
            catch (WorkerLostException again) when (clock.Elapsed < TakeoverWindow)
            {
                if (!cluster.IsActive(again.Silo, ct)) target = cluster.Reassign(k, again.Silo, ct);
                else Task.Delay(TimeSpan.FromSeconds(1), ct).GetAwaiter().GetResult();
            }
        }
    }

    public void Dispose() { }
}
