using DotQuant.Engine.Calibration;

namespace DotQuant.Engine.Distributed;

/// <summary>The calibration sequences split into contiguous shards, one per worker, on the batch
/// boundaries a single process uses: each batch then goes through the same forward as in a single
/// process, and a shard's statistics are the single process's partial sums over its batches. Shards
/// are balanced by tokens; the split depends only on the sequences and the shard count.
/// <paramref name="First"/> numbers the first shard's first sequence in the run (a worker's plan holds
/// its own shard only).</summary>
public sealed record ShardPlan(IReadOnlyList<IReadOnlyList<long[]>> Shards, int First = 0)
{
    public int Count => Shards.Count;

    /// <summary>The number of shard <paramref name="shard"/>'s first sequence in the run.</summary>
    public int FirstSequence(int shard) => First + Shards.Take(shard).Sum(s => s.Count);

    public static ShardPlan Split(IReadOnlyList<long[]> sequences, int shards)
    {
        if (shards < 1) throw new ArgumentOutOfRangeException(nameof(shards));
        var sizes = ActivationStream.BatchSizes(sequences);
        shards = Math.Min(shards, sizes.Count);
        var tokens = new List<long>();
        int at = 0;
        foreach (int n in sizes)
        {
            tokens.Add(sequences.Skip(at).Take(n).Sum(s => (long)s.Length));
            at += n;
        }
        long total = tokens.Sum();
        var result = new List<IReadOnlyList<long[]>>();
        int batch = 0, sequence = 0;
        long done = 0;
        for (int k = 0; k < shards; k++)
        {
            // Batches until this shard's share of the tokens is reached, leaving one batch per later shard.
            long target = total * (k + 1) / shards;
            var shard = new List<long[]>();
            do
            {
                for (int i = 0; i < sizes[batch]; i++) shard.Add(sequences[sequence++]);
                done += tokens[batch++];
            }
            while (batch < sizes.Count - (shards - 1 - k) && done + tokens[batch] / 2 <= target);
            result.Add(shard);
        }
        return new ShardPlan(result);
    }
}
