using DotQuant.Engine.Calibration;
using DotQuant.Runtime;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.Models;

namespace DotQuant.Engine.Distributed;

/// <summary>The coordinator's Hessian source in a distributed run: the statistics are the workers'
/// shard sums (<see cref="IShardWorkers.GroupSums"/>), scaled once by the manifest's own source
/// (<paramref name="scaling"/>, which never sees a stream) as a single process scales its own;
/// each solved linear goes to every worker (codes and grids); the streams advance on the workers. The coordinator
/// holds the block being solved, never a stream. After each block the shards' states are saved under
/// <paramref name="states"/>/block-N (N the next block): the resume point of the run, and what a worker
/// that takes over a lost shard starts from.</summary>
public sealed class DistributedHessian(IShardWorkers workers, string states, ISummedHessianSource scaling) : IHessianSource
{
    public bool NeedsCalibration => true;

    public static string BlockStates(string states, int nextBlock) => RunFolder.BlockFolder(states, nextBlock);

    public void BeginBlock(BlockWork work) => workers.BeginBlock(work.Block.Index, () => SolvedSoFar(work.Block), work.Cancellation);

    static IEnumerable<(string, Quantizers.SolvedLinear)> SolvedSoFar(DecoderBlock block)
    {
        foreach (var l in block.Linears)
            if (l.Solved is not null) yield return (l.Name, l.Solved);
    }

    public GroupStatistics Group(BlockWork work, IReadOnlyList<NamedLinear> group, IReadOnlyList<NamedLinear> active)
    {
        int index = LayerHessian.IndexOf(work.Block, group);
        return scaling.Scale(workers.GroupSums(work.Block.Index, index, work.Cancellation), active);
    }

    public void Solved(BlockWork work, NamedLinear linear)
    {
        workers.UseSolved(work.Block.Index, linear.Name, linear.Solved!, work.Cancellation);
    }

    public bool AdvanceStream(BlockWork work)
    {
        workers.Advance(work.Block.Index, BlockStates(states, work.Block.Index + 1), work.Cancellation);
        // The previous block's states stay until the resume point that names the new ones is committed.
        RunFolder.DropBlockFoldersBefore(states, work.Block.Index);
        return true;
    }

    public void EndBlock(BlockWork work) { }

    public void Save(string folder) { }

    public void Restore(string folder, IReadOnlyList<long[]> sequences, int nextBlock)
    {
        string saved = BlockStates(states, nextBlock);
        if (!Directory.Exists(saved))
            throw new DotQuantException(ErrorCodes.ClusterWorkerLost, $"the shards' states at block {nextBlock} are missing from {states}: run it again without --resume", folder);
        workers.Restore(saved, nextBlock, default);
    }

    public void Dispose() { }
}
