using DotQuant.Engine.Calibration;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.Quantizers;
using static TorchSharp.torch;

namespace DotQuant.Engine.Distributed;

/// <summary>The shards as <see cref="ShardWorker"/>s in this process, one after another: the distributed
/// algorithm without a transport (tests compare it with a single process and with the cluster).</summary>
public sealed class LocalShardWorkers(List<ShardWorker> workers, Func<int, string?, int, ShardWorker> reopen, int[]? solvedCounts = null) : IShardWorkers
{
    public int Shards => workers.Count;

    public void BeginBlock(int block, Func<IEnumerable<(string Linear, SolvedLinear Solved)>> solvedSoFar, CancellationToken ct)
    {
        foreach (var w in workers) w.BeginBlock(block, ct);
    }

    public StatisticSums GroupSums(int block, int group, CancellationToken ct) =>
        StatisticSums.InShardOrder(workers.Count, k => workers[k].GroupSums(block, group, ct));

    /// <summary>Through the wire form, as over a network, so the in-process tests cover it.</summary>
    public void UseSolved(int block, string linear, SolvedLinear solved, CancellationToken ct)
    {
        using var wire = SolvedLinearWire.Encode(solved);
        foreach (var w in workers) w.UseSolved(block, linear, SolvedLinearWire.Decode(wire));
    }

    public IReadOnlyList<LinearSolution>[] Solve(int block, SolveRequest?[] requests, CancellationToken ct) =>
        requests.Select((r, k) =>
        {
            if (r is null) return (IReadOnlyList<LinearSolution>)[];
            if (solvedCounts is not null) solvedCounts[k] += r.Tasks.Count;
            return Through(workers[k].Solve(block, r.Statistics.Select(t => t.clone()).ToList(), r.Tasks, r.RtnBaseline, ct));
        }).ToArray();

    /// <summary>The results as the coordinator receives them from a remote worker.</summary>
    static IReadOnlyList<LinearSolution> Through(IReadOnlyList<LinearSolution> solved) => solved.Select(s =>
    {
        using var wire = SolvedLinearWire.Encode(s.Q);
        s.Q.Dispose();
        return s with { Q = SolvedLinearWire.Decode(wire) };
    }).ToList();

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
