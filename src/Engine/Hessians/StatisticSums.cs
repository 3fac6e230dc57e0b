using DotQuant.Engine.Torch;
using static TorchSharp.torch;

namespace DotQuant.Engine.Hessians;

/// <summary>The unscaled fp64 sums a group's statistics are made of, over some calibration sequences, by
/// name: "H" (and "D") for the layer-wise statistics, each linear's name for OAC's H̄. A distributed run's
/// shards return one each; the coordinator adds them in shard order (<see cref="Add"/>) and the source
/// that defines the statistic scales the total once (<see cref="ISummedHessianSource.Scale"/>). Owns its
/// tensors.</summary>
public sealed class StatisticSums : IDisposable
{
    readonly List<(string Name, Tensor Sum)> _sums;

    public StatisticSums(IEnumerable<(string Name, Tensor Sum)> sums, int sequences)
    {
        _sums = sums.ToList();
        if (_sums.Any(s => s.Sum.dtype != ScalarType.Float64))
        {
            Dispose();
            throw new ArgumentException("statistic sums are fp64 (the shards' sums add up to the single process's only then)");
        }
        Sequences = sequences;
    }

    /// <summary>The calibration sequences the sums cover.</summary>
    public int Sequences { get; private set; }

    public IReadOnlyList<(string Name, Tensor Sum)> Tensors => _sums;

    /// <summary>Adds another shard's sums (the same names in the same order); <paramref name="other"/> stays the caller's.</summary>
    public void Add(StatisticSums other)
    {
        if (!_sums.Select(s => s.Name).SequenceEqual(other._sums.Select(s => s.Name), StringComparer.Ordinal))
            throw new InvalidOperationException($"shards disagree on the statistics: [{string.Join(", ", _sums.Select(s => s.Name))}] and [{string.Join(", ", other._sums.Select(s => s.Name))}]");
        for (int i = 0; i < _sums.Count; i++) _sums[i].Sum.add_(other._sums[i].Sum, Scalars.One);
        Sequences += other.Sequences;
    }

    /// <summary>The sums of shards 0…<paramref name="count"/>−1, each given by <paramref name="shard"/> and added in
    /// shard order (the order that makes a rerun with the same shard count repeat its bytes).</summary>
    public static StatisticSums InShardOrder(int count, Func<int, StatisticSums> shard)
    {
        StatisticSums? total = null;
        try
        {
            for (int k = 0; k < count; k++)
            {
                var sums = shard(k);
                if (total is null) total = sums;
                else using (sums) total.Add(sums);
            }
            return total ?? throw new ArgumentOutOfRangeException(nameof(count), "no shard to add");
        }
        catch
        {
            total?.Dispose();
            throw;
        }
    }

    /// <summary>Hands the sum named <paramref name="name"/> over to the caller (null when there is none).</summary>
    public Tensor? Take(string name)
    {
        int i = _sums.FindIndex(s => s.Name == name);
        if (i < 0) return null;
        var t = _sums[i].Sum;
        _sums.RemoveAt(i);
        return t;
    }

    public void Dispose()
    {
        foreach (var (_, t) in _sums) t.Dispose();
        _sums.Clear();
    }
}
