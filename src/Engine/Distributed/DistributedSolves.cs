using DotQuant.Engine.Calibration;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.Models;

namespace DotQuant.Engine.Distributed;

/// <summary>Spreads a group's solves over the workers: each linear goes to one worker (longest first, to
/// the worker it finishes soonest on, counting a Hessian's factorization once per worker that uses it),
/// which receives the scaled statistics it needs and solves exactly as the coordinator would. A group of
/// one linear, or a run of one worker, is solved on the coordinator: nothing would run in parallel, and
/// its statistics are already there; so is a group whose spread would save less than a quarter of its solve
/// (<see cref="Pays"/>). The assignment depends only on the shapes, so a rerun solves each
/// linear on the same shard; any assignment gives the same bits (the same code and numerics everywhere).</summary>
public sealed class DistributedSolves(IShardWorkers workers) : ISolvePlacement
{
    static readonly IReadOnlyDictionary<string, LinearSolution> None = new Dictionary<string, LinearSolution>();

    public IReadOnlyDictionary<string, LinearSolution> SolveElsewhere(BlockWork work, IReadOnlyList<NamedLinear> active, GroupStatistics stats, bool rtnBaseline)
    {
        if (workers.Shards < 2 || active.Count < 2) return None;
        var assigned = Assign(active, stats, workers.Shards);
        if (!Pays(active, stats, assigned)) return None;
        var requests = assigned.Select(linears => linears.Count == 0 ? null : Request(linears, stats, rtnBaseline)).ToArray();
        var results = workers.Solve(work.Block.Index, requests, work.Cancellation);
        var byName = new Dictionary<string, LinearSolution>(StringComparer.Ordinal);
        for (int k = 0; k < assigned.Length; k++)
            for (int i = 0; i < assigned[k].Count; i++)
                byName[assigned[k][i].Name] = results[k][i];
        return byName;
    }

    /// <summary>Whether spreading cuts the group's solve by at least a quarter (by the FLOPs of <see cref="Cost"/>):
    /// below that the scaled statistics sent out and the results read back, and two solves sharing a
    /// machine's memory bandwidth, eat the gain (measured on the bench's 2-core box: q against k and v,
    /// 13% fewer FLOPs on the longest worker, ran slower than on the coordinator; gate against up, 45%
    /// fewer, about even). The same shapes always give the same answer.</summary>
    static bool Pays(IReadOnlyList<NamedLinear> active, GroupStatistics stats, List<NamedLinear>[] assigned)
    {
        double serial = Cost(active, stats), longest = assigned.Max(linears => Cost(linears, stats));
        return longest <= 0.75 * serial;
    }

    /// <summary>One worker's FLOPs for <paramref name="linears"/>: each one's updates, each distinct H's factorization once.</summary>
    static double Cost(IReadOnlyList<NamedLinear> linears, GroupStatistics stats)
    {
        double total = 0;
        var factored = new List<TorchSharp.torch.Tensor>();
        foreach (var l in linears)
        {
            double n = l.InFeatures;
            total += 2.0 * l.OutFeatures * n * n;
            if (stats.H(l) is { } h && !factored.Any(f => ReferenceEquals(f, h)))
            {
                factored.Add(h);
                total += 4.0 / 3.0 * n * n * n;
            }
        }
        return total;
    }

    /// <summary>Longest-processing-time first: each linear goes to the worker whose <see cref="Cost"/> it
    /// raises least (a worker already holding the linear's H does not factor it again); ties to the lower shard.</summary>
    public static List<NamedLinear>[] Assign(IReadOnlyList<NamedLinear> active, GroupStatistics stats, int shards)
    {
        var assigned = Enumerable.Range(0, shards).Select(_ => new List<NamedLinear>()).ToArray();
        var longestFirst = Enumerable.Range(0, active.Count).OrderByDescending(i => (double)active[i].OutFeatures * active[i].InFeatures);   // stable: ties keep the group's order
        var position = new Dictionary<NamedLinear, int>(ReferenceEqualityComparer.Instance);
        foreach (int i in longestFirst)
        {
            var lin = active[i];
            position[lin] = i;
            assigned[Enumerable.Range(0, shards).MinBy(k => Cost([.. assigned[k], lin], stats))].Add(lin);
        }
        // Each worker solves its linears in the group's order (the order a single process uses).
        foreach (var list in assigned) list.Sort((a, b) => position[a].CompareTo(position[b]));
        return assigned;
    }

    static SolveRequest Request(List<NamedLinear> linears, GroupStatistics stats, bool rtnBaseline)
    {
        var tensors = new List<TorchSharp.torch.Tensor>();
        int IndexOf(TorchSharp.torch.Tensor? t)
        {
            if (t is null) return -1;
            int i = tensors.FindIndex(x => ReferenceEquals(x, t));
            if (i >= 0) return i;
            tensors.Add(t);
            return tensors.Count - 1;
        }
        var tasks = linears.Select(l => new SolveTask(l.Name, IndexOf(stats.H(l)), IndexOf(stats.D(l)))).ToList();
        return new SolveRequest(tensors, tasks, rtnBaseline);
    }
}
