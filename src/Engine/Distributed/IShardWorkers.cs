using DotQuant.Engine.Calibration;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.Quantizers;
using static TorchSharp.torch;

namespace DotQuant.Engine.Distributed;

/// <summary>The coordinator's view of a distributed run's workers, each holding one shard of the
/// calibration stream (<see cref="ShardPlan"/>). The calls follow the sequential driver: a block
/// begins, each group's statistics are summed over the shards, a group's linears may be solved on the
/// workers (<see cref="Solve"/>), each solved linear is handed to every worker, and the streams advance
/// where they live. A transport (Orleans, or in-process for
/// tests) implements it; the algorithm does not change.</summary>
public interface IShardWorkers : IDisposable
{
    /// <summary>The shard count (one per worker).</summary>
    int Shards { get; }

    /// <summary>Every worker loads block <paramref name="block"/> and its Hessian source prepares.
    /// <paramref name="solvedSoFar"/> gives the block's linears solved so far (the caller's; a worker
    /// that takes over a lost shard mid-block receives them again).</summary>
    void BeginBlock(int block, Func<IEnumerable<(string Linear, SolvedLinear Solved)>> solvedSoFar, CancellationToken ct);

    /// <summary>The unscaled fp64 sums of group <paramref name="group"/>'s statistics over all shards, added
    /// in shard order (<see cref="StatisticSums.Add"/>), and the sequences they cover. A single process adds
    /// the same batches' fp32 products into one fp64 sum, so the two agree bit for bit except where an fp64
    /// rounding falls on an fp32 rounding boundary.</summary>
    StatisticSums GroupSums(int block, int group, CancellationToken ct);

    /// <summary>Linear <paramref name="linear"/> of the current block computes with <paramref name="solved"/>
    /// (the caller's) on every worker from now on. It travels in its wire form (<see cref="SolvedLinearWire"/>:
    /// codes and grids, not fp32), and each worker rebuilds the same weight the coordinator holds.</summary>
    void UseSolved(int block, string linear, SolvedLinear solved, CancellationToken ct);

    /// <summary>Solves linears of the current block on the workers at once: <paramref name="requests"/>[k]
    /// (null: nothing) on shard k's worker. The results come back per shard in the requests' task order,
    /// owned by the caller. A worker lost meanwhile is replaced and its request solved again.</summary>
    IReadOnlyList<LinearSolution>[] Solve(int block, SolveRequest?[] requests, CancellationToken ct);

    /// <summary>Every shard's stream moves through the solved block, the block ends, and each shard's state
    /// at the next block's input is saved into <paramref name="states"/>/shard-K on this machine (written
    /// whole, then renamed into place).</summary>
    void Advance(int block, string states, CancellationToken ct);

    /// <summary>The shards start again from the states saved in <paramref name="states"/> (a resumed run,
    /// at <paramref name="nextBlock"/>'s input).</summary>
    void Restore(string states, int nextBlock, CancellationToken ct);
}

/// <summary>Linear <paramref name="Linear"/> solved from statistics tensor <paramref name="H"/> (and
/// <paramref name="D"/>; −1: none) of its <see cref="SolveRequest"/>.</summary>
public sealed record SolveTask(string Linear, int H, int D);

/// <summary>What one worker solves: the scaled statistics (the caller's; sent once however many of the
/// tasks share them) and the linears, in order.</summary>
public sealed record SolveRequest(IReadOnlyList<Tensor> Statistics, IReadOnlyList<SolveTask> Tasks, bool RtnBaseline);

/// <summary>Where a distributed run keeps its shards' states between blocks.</summary>
public static class ShardStates
{
    public static string Folder(string states, int shard) => Path.Combine(states, $"shard-{shard}");

    /// <summary>Moves a state written in <paramref name="temp"/> into place, replacing an older one.</summary>
    public static void Publish(string temp, string states, int shard)
    {
        string target = Folder(states, shard);
        Directory.CreateDirectory(states);
        if (Directory.Exists(target)) Directory.Delete(target, recursive: true);
        Directory.Move(temp, target);
    }
}
