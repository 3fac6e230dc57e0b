using DotQuant.Engine.Hessians;
using static TorchSharp.torch;

namespace DotQuant.Engine.Distributed;

/// <summary>The shards as <see cref="ShardWorker"/>s in this process, one after another: the distributed
/// algorithm without a transport (tests compare it with a single process and with the cluster).</summary>
public sealed class LocalShardWorkers(List<ShardWorker> workers, Func<int, string?, int, ShardWorker> reopen) : IShardWorkers
{
    public int Shards => workers.Count;

    public void BeginBlock(int block, Func<IEnumerable<(string Linear, Tensor Weight)>> solvedSoFar, CancellationToken ct)
    {
        foreach (var w in workers) w.BeginBlock(block, ct);
    }

    public StatisticSums GroupSums(int block, int group, CancellationToken ct) =>
        StatisticSums.InShardOrder(workers.Count, k => workers[k].GroupSums(block, group, ct));

    public void UseWeight(int block, string linear, Tensor weight, CancellationToken ct)
    {
        foreach (var w in workers) w.UseWeight(block, linear, weight);
    }

    public void Advance(int block, string states, CancellationToken ct)
    {
        for (int k = 0; k < workers.Count; k++)
        {
            workers[k].Advance(block, ct);
            string temp = ShardStates.Folder(states, k) + ".tmp";
            if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
            workers[k].SaveState(temp);
            ShardStates.Publish(temp, states, k);
        }
    }

    public void Restore(string states, int nextBlock, CancellationToken ct)
    {
        for (int k = 0; k < workers.Count; k++)
        {
            workers[k].Dispose();
            workers[k] = reopen(k, ShardStates.Folder(states, k), nextBlock);
        }
    }

    public void Dispose()
    {
        foreach (var w in workers) w.Dispose();
    }
}
