using DotQuant.Engine.Calibration;
using DotQuant.Engine.Diagnostics;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.Models;

namespace DotQuant.Engine.Distributed;

/// <summary>The coordinator's Hessian source in a distributed run: the statistics are the workers'
/// shard sums (<see cref="IShardWorkers.GroupSums"/>), scaled once as a single process scales its own;
/// each solved linear's weight goes to every worker; the streams advance on the workers. The coordinator
/// holds the block being solved, never a stream. After each block the shards' states are saved under
/// <paramref name="states"/>/block-N (N the next block): the resume point of the run, and what a worker
/// that takes over a lost shard starts from.</summary>
public sealed class DistributedHessian(IShardWorkers workers, string states) : IHessianSource
{
    public bool NeedsCalibration => true;

    public static string BlockStates(string states, int nextBlock) => Path.Combine(states, $"block-{nextBlock}");

    public void BeginBlock(BlockWork work) => workers.BeginBlock(work.Block.Index, () => SolvedSoFar(work.Block), work.Cancellation);

    static IEnumerable<(string, TorchSharp.torch.Tensor)> SolvedSoFar(DecoderBlock block)
    {
        foreach (var l in block.Linears)
            if (l.Solved is not null) yield return (l.Name, l.Solved.Dequantize());
    }

    public GroupStatistics Group(BlockWork work, IReadOnlyList<NamedLinear> group, IReadOnlyList<NamedLinear> active)
    {
        int index = LayerHessian.IndexOf(work.Block, group);
        var (sumH, sumD, sequences) = workers.GroupSums(work.Block.Index, index, work.Cancellation);
        var (h, d) = LayerStatistics.Scale(sumH, sumD, sequences);
        return GroupStatistics.Shared(active, h, d);
    }

    public void Solved(BlockWork work, NamedLinear linear)
    {
        using var weight = linear.Solved!.Dequantize();
        workers.UseWeight(work.Block.Index, linear.Name, weight, work.Cancellation);
    }

    public bool AdvanceStream(BlockWork work)
    {
        workers.Advance(work.Block.Index, BlockStates(states, work.Block.Index + 1), work.Cancellation);
        DropOlderThan(work.Block.Index);
        return true;
    }

    public void EndBlock(BlockWork work) { }

    public void Save(string folder) { }

    /// <summary>States older than the previous block are no longer needed: the previous one stays until the
    /// resume point that names the new one is committed.</summary>
    void DropOlderThan(int block)
    {
        foreach (var dir in Directory.GetDirectories(states, "block-*"))
            if (int.TryParse(Path.GetFileName(dir)[6..], out int b) && b < block) Directory.Delete(dir, recursive: true);
    }

    public void Restore(string folder, IReadOnlyList<long[]> sequences, int nextBlock)
    {
        string saved = BlockStates(states, nextBlock);
        if (!Directory.Exists(saved))
            throw new DotQuantException(ErrorCodes.ClusterWorkerLost, $"the shards' states at block {nextBlock} are missing from {states}: run it again without --resume", folder);
        workers.Restore(saved, nextBlock, default);
    }

    public void Dispose() { }
}
