using DotQuant.Runtime;
using DotQuant.Engine.Distributed;
using DotQuant.Engine.Calibration;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.Quantizers;
using static TorchSharp.torch;

namespace DotQuant.Cluster;

/// <summary><see cref="IShardWorkers"/> over Orleans. Each call goes to every shard at once; the shard sums
/// come back in chunks and are added in shard order (<see cref="StatisticSums.Add"/>), one shard's tensors at a time.
/// A shard whose worker is gone (killed, left: Orleans' membership breaks the calls to it) is handed to
/// another worker, which starts from the shard's state saved after the last block (or embeds it, in block
/// 0), loads the current block, receives the weights solved so far and repeats the failed call: the run
/// then writes what an undisturbed run writes.</summary>
sealed class OrleansShardWorkers(OrleansCluster cluster, ShardJob job) : IShardWorkers
{
    const int StateChunk = TensorChunks.ChunkBytes;
    /// <summary>Chunk calls in flight to one worker: the sender serializes the next chunk while the receiver
    /// copies one (one call at a time left loopback at 110–370 MB/s, bench/results.md "Scale-out").</summary>
    const int Window = 4;
    int _block = -1;
    string? _states;                 // the shards' states at the current block's input (null: embed)
    int _statesBlock;
    Func<IEnumerable<(string Linear, SolvedLinear Solved)>> _solvedSoFar = () => [];

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

    public void BeginBlock(int block, Func<IEnumerable<(string Linear, SolvedLinear Solved)>> solvedSoFar, CancellationToken ct)
    {
        _block = block;
        _solvedSoFar = solvedSoFar;
        All(k => { cluster.Call(k, g => g.BeginBlock(block), $"loading block {block}", ct); return 0; }, $"loading block {block}", ct);
    }

    public StatisticSums GroupSums(int block, int group, CancellationToken ct)
    {
        string during = $"computing block {block}'s group {group} statistics";
        var headers = All(k => cluster.Call(k, g => g.ComputeGroupSums(block, group), during, ct), during, ct);
        var traffic = cluster.Traffic;
        lock (traffic)
        {
            for (int k = 0; k < headers.Length; k++)
                traffic.ComputeSeconds[k] = traffic.ComputeSeconds.GetValueOrDefault(k) + headers[k].Seconds;
            traffic.WaitingOnSlowest += headers.Max(h => h.Seconds) - headers.Min(h => h.Seconds);
            traffic.SlowestSeconds += headers.Max(h => h.Seconds);
        }
        var receiving = System.Diagnostics.Stopwatch.StartNew();
        // A sum every shard sent as its upper triangle is added packed (the same element-wise additions)
        // and unpacked once; one sent whole anywhere is unpacked on arrival.
        var side = headers[0].Symmetric.Select((n, i) => headers.All(h => h.Symmetric[i] == n) ? n : 0).ToArray();
        // Read back in shard order; a worker lost now computes its sums again on the one that takes over.
        var total = StatisticSums.InShardOrder(headers.Length, shard => OnShard(shard, () =>
        {
            var header = headers[shard];
            var received = new List<(string, Tensor)>();
            try
            {
                for (int i = 0; i < header.Names.Length; i++)
                {
                    int tensor = i;
                    var t = Receive(shard, header.Tensors[i], (g, c) => g.ReadSums(tensor, c), n => cluster.Traffic.BytesReceived += n, during, ct);
                    received.Add((header.Names[i], t));
                    if (header.Symmetric[i] > 0 && side[i] == 0)
                        received[^1] = (header.Names[i], Unpacked(t, header.Symmetric[i]));
                    else if (header.Symmetric[i] != side[i])
                        throw new DotQuantException(ErrorCodes.Internal, $"shard {shard} sent {header.Names[i]} {(header.Symmetric[i] > 0 ? "packed" : "whole")} on a second computation");
                }
                return new StatisticSums(received, header.Sequences);
            }
            catch
            {
                foreach (var (_, t) in received) t.Dispose();
                throw;
            }
        }, () => headers[shard] = cluster.Call(shard, g => g.ComputeGroupSums(block, group), during, ct), ct));
        try
        {
            if (side.Any(n => n > 0))
                total = new StatisticSums(headers[0].Names.Select((name, i) =>
                {
                    var t = total.Take(name)!;
                    return (name, side[i] > 0 ? Unpacked(t, side[i]) : t);
                }).ToList(), total.Sequences);
        }
        catch
        {
            total.Dispose();
            throw;
        }
        lock (traffic) traffic.ReceiveSeconds += receiving.Elapsed.TotalSeconds;
        return total;
    }

    static Tensor Unpacked(Tensor packed, long side)
    {
        using (packed) return SymmetricPacking.Unpack(packed, side);
    }

    /// <summary>A tensor kept on shard <paramref name="shard"/>'s worker, its chunks read with <paramref name="read"/>
    /// (pipelined) and counted with <paramref name="counted"/> (under the traffic lock).</summary>
    Tensor Receive(int shard, TensorHeader header, Func<IShardGrain, int, Task<byte[]>> read, Action<long> counted, string during, CancellationToken ct)
    {
        var t = TensorChunks.Allocate(header);
        try
        {
            cluster.Call(shard, g => Pipelined(header.Chunks, c => read(g, c), (c, data) =>
            {
                TensorChunks.Write(t, c, data);
                lock (cluster.Traffic) counted(data.Length);
            }), during, ct);
            return t;
        }
        catch
        {
            t.Dispose();
            throw;
        }
    }

    public void UseSolved(int block, string linear, SolvedLinear solved, CancellationToken ct)
    {
        using var wire = SolvedLinearWire.Encode(solved);
        var header = WireMessages.Header(wire);
        var chunks = WireMessages.Chunks(wire);
        var sending = System.Diagnostics.Stopwatch.StartNew();
        All(k => { Send(k, block, linear, header, chunks, ct); return 0; }, $"receiving {linear}'s solved weight", ct);
        lock (cluster.Traffic) cluster.Traffic.SendSeconds += sending.Elapsed.TotalSeconds;
    }

    void Send(int k, int block, string linear, WireHeader header, byte[][][] chunks, CancellationToken ct) =>
        cluster.Call(k, async g =>
        {
            await Put(g, header.Tensors, chunks);
            await g.UseSolved(block, linear, header);
            lock (cluster.Traffic) cluster.Traffic.BytesSent += header.Tensors.Sum(t => t.Bytes);
        }, $"receiving {linear}'s solved weight", ct);

    /// <summary>Puts tensors 0…n−1 on a worker for its next call, their chunks pipelined.</summary>
    static async Task Put(IShardGrain g, TensorHeader[] headers, byte[][][] chunks)
    {
        for (int i = 0; i < headers.Length; i++)
        {
            int index = i;
            await g.PutTensor(index, headers[index]);
            await Pipelined(chunks[index].Length, async c => { await g.PutChunk(index, c, chunks[index][c]); return 0; }, (_, _) => { });
        }
    }

    public IReadOnlyList<LinearSolution>[] Solve(int block, SolveRequest?[] requests, CancellationToken ct)
    {
        string during = $"solving block {block}'s linears";
        var sent = requests.Select(r => r?.Statistics.Select(t =>
        {
            using var c = t.contiguous();
            return (Header: TensorChunks.Header(c), Chunks: TensorChunks.All(c));
        }).ToArray()).ToArray();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var results = All(k => requests[k] is not { } r ? [] : SolveOn(k, block, r, sent[k]!, during, ct), during, ct);
        lock (cluster.Traffic) cluster.Traffic.SolveSeconds += clock.Elapsed.TotalSeconds;
        return results;
    }

    IReadOnlyList<LinearSolution> SolveOn(int k, int block, SolveRequest r, (TensorHeader Header, byte[][] Chunks)[] statistics, string during, CancellationToken ct)
    {
        var call = new SolveCall(r.Tasks.Select(t => t.Linear).ToArray(), r.Tasks.Select(t => t.H).ToArray(), r.Tasks.Select(t => t.D).ToArray(), r.RtnBaseline);
        var headers = cluster.Call(k, async g =>
        {
            await Put(g, statistics.Select(s => s.Header).ToArray(), statistics.Select(s => s.Chunks).ToArray());
            lock (cluster.Traffic) cluster.Traffic.SolveBytes += statistics.Sum(s => s.Header.Bytes);
            return await g.Solve(block, call);
        }, during, ct);
        var solved = new List<LinearSolution>();
        try
        {
            for (int i = 0; i < headers.Length; i++)
            {
                var h = headers[i];
                var tensors = new List<Tensor>();
                try
                {
                    for (int j = 0; j < h.Wire.Names.Length; j++)
                    {
                        int linear = i, tensor = j;
                        tensors.Add(Receive(k, h.Wire.Tensors[j], (g, c) => g.ReadSolved(linear, tensor, c), n => cluster.Traffic.SolveBytes += n, during, ct));
                    }
                }
                catch
                {
                    foreach (var t in tensors) t.Dispose();
                    throw;
                }
                using var wire = WireMessages.Open(h.Wire, tensors);
                solved.Add(new LinearSolution(SolvedLinearWire.Decode(wire), h.RtnLoss, h.Seconds, h.Warnings));
            }
            return solved;
        }
        catch
        {
            foreach (var s in solved) s.Q.Dispose();
            throw;
        }
    }

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
                int count = (int)((f.Length + StateChunk - 1) / StateChunk);
                cluster.Call(k, g => Pipelined(count, c => g.ReadStateFile(f.Name, (long)c * StateChunk, StateChunk), (c, data) =>
                {
                    RandomAccess.Write(output.SafeFileHandle, data, (long)c * StateChunk);
                    lock (cluster.Traffic) cluster.Traffic.StateBytes += data.Length;
                }), $"sending its state after block {block}", ct);
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

    /// <summary>Chunks 0…<paramref name="count"/>−1 requested <see cref="Window"/> at a time and handed to
    /// <paramref name="received"/> in order (the worker may serve them in any order: each names its place).</summary>
    static async Task<int> Pipelined<T>(int count, Func<int, Task<T>> request, Action<int, T> received)
    {
        var inFlight = new Queue<(int Chunk, Task<T> Data)>();
        int next = 0;
        try
        {
            while (next < count || inFlight.Count > 0)
            {
                while (next < count && inFlight.Count < Window) inFlight.Enqueue((next, request(next++)));
                var (chunk, data) = inFlight.Dequeue();
                received(chunk, await data);
            }
        }
        catch
        {
            // The others' failures are the same failure; observe them so none goes unobserved.
            foreach (var (_, t) in inFlight) _ = t.ContinueWith(x => x.Exception, TaskScheduler.Default);
            throw;
        }
        return count;
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
                    foreach (var (linear, solved) in _solvedSoFar())
                        using (var wire = SolvedLinearWire.Encode(solved))
                            Send(k, _block, linear, WireMessages.Header(wire), WireMessages.Chunks(wire), ct);
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
