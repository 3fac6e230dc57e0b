namespace DotQuant.Engine.Distributed;

/// <summary><paramref name="workers"/> shards in this process, one after another: the distributed
/// algorithm without a transport. Tests compare it with a single process (one shard is the single
/// process bit for bit) and with the Orleans cluster (the same bytes for the same shard count).</summary>
public sealed class InProcessCluster(int workers, string scratch) : ICalibrationCluster
{
    public int Workers => workers;

    /// <summary>Linears solved on the shards' workers so far, per shard.</summary>
    public int[] SolvedOnWorkers { get; private set; } = [];

    public IShardWorkers Start(ShardJob job, CancellationToken ct)
    {
        ShardWorker Open(int k, string? restore, int nextBlock) => ShardWorker.Open(job, k, Path.Combine(scratch, $"shard-{k}"), restore, nextBlock, ct: ct);
        var started = new List<ShardWorker>();
        try
        {
            for (int k = 0; k < job.Plan.Count; k++)
                started.Add(Open(k, null, 0));
        }
        catch
        {
            foreach (var w in started) w.Dispose();
            throw;
        }
        SolvedOnWorkers = new int[started.Count];
        return new LocalShardWorkers(started, Open, SolvedOnWorkers);
    }
}
