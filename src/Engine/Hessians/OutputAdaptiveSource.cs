using System.Diagnostics;
using DotQuant.Engine.Calibration;
using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Engine.Hessians;

/// <summary>OAC's Hessians in the schedule the options name (spec §2.4): per block after the earlier
/// blocks were solved (sequential), per true-sequential group (sequential_groups), or all at once
/// through the float model (once — one forward and backward for the whole model, where sequential
/// costs L²/2 block passes (bench/results.md, "OAC Hessian cost"); each block's H̄ goes to the scratch folder
/// as the backward sweep finishes it and comes back when the block is calibrated, so memory stays one
/// block's H̄ and the disk holds the rest).</summary>
public sealed class OutputAdaptiveSource(OacOptions options, int firstSequence = 0) : ISummedHessianSource
{
    // Unscaled fp64 sums per linear, and the sequences they cover, until the linear's group is asked for.
    readonly Dictionary<string, Tensor> _pending = new(StringComparer.Ordinal);
    int _sequences;
    bool _onceDone;

    public OacOptions Options => options;
    public bool NeedsCalibration => true;

    public void BeginBlock(BlockWork work)
    {
        int b = work.Block.Index;
        var sw = Stopwatch.StartNew();
        bool computed = true;
        switch (options.Schedule)
        {
            case OacSchedule.Sequential:
                OutputAdaptiveHessian.Sums(work.Model, b, work.Block, work.Stream, PlannedIn(work, [b]), options, work.Contexts, work.Scratch, firstSequence,
                    (_, sums) => Take(sums), work.Cancellation);
                break;
            case OacSchedule.Once when !_onceDone:
                // From the embeddings through the float model; a resumed run recomputes the same H̄.
                using (var embedded = ActivationStream.Embed(work.Model, work.Stream.Ids.SelectMany(x => x).ToList(), work.Stream.Storage))
                    OutputAdaptiveHessian.Sums(work.Model, 0, null, embedded,
                        PlannedIn(work, Enumerable.Range(b, work.Model.BlockCount - b)), options, work.Contexts, work.Scratch, firstSequence,
                        (block, sums) => Spill(work.Scratch, block, sums), work.Cancellation);
                _onceDone = true;
                break;
            default:
                computed = false;
                break;
        }
        if (options.Schedule == OacSchedule.Once) Unspill(work.Scratch, b, work.Stream);
        if (computed) work.Events?.Invoke(new ProgressEvent($"block {b}: output-adaptive Hessians in {sw.Elapsed.TotalSeconds:F1} s", b, sw.Elapsed.TotalSeconds));
    }

    static HashSet<string> PlannedIn(BlockWork work, IEnumerable<int> blocks) =>
        blocks.SelectMany(b => work.Model.LinearLayout(b).SelectMany(g => g)).Select(l => l.Name).Where(work.Planned.Contains).ToHashSet(StringComparer.Ordinal);

    void Take(StatisticSums sums)
    {
        using (sums)
        {
            foreach (var name in sums.Tensors.Select(t => t.Name).ToList())
            {
                if (_pending.Remove(name, out var old)) old.Dispose();
                _pending[name] = sums.Take(name)!;
            }
            _sequences = sums.Sequences;
        }
    }

    static string SpillFile(string scratch, int block) => Path.Combine(scratch, $"oac-hbar-{block}.safetensors");

    /// <summary>A block's sums to disk (fp64, exact), the tensors released.</summary>
    static void Spill(string scratch, int block, StatisticSums sums)
    {
        using (sums)
            if (sums.Tensors.Count > 0) IO.SafeTensorsWriter.Write(SpillFile(scratch, block), sums.Tensors.ToDictionary(t => t.Name, t => t.Sum));
    }

    void Unspill(string scratch, int block, ActivationStream stream)
    {
        string file = SpillFile(scratch, block);
        if (!File.Exists(file)) return;
        using (var f = IO.SafeTensorsFile.Open(file))
            Take(new StatisticSums(f.Tensors.Keys.Select(n => (n, f.Load(n).DetachFromDisposeScope())).ToList(), (int)stream.Sequences));
        File.Delete(file);
    }

    public GroupStatistics Group(BlockWork work, IReadOnlyList<NamedLinear> group, IReadOnlyList<NamedLinear> active) =>
        Scale(Accumulate(work, group, active), active);

    public StatisticSums Accumulate(BlockWork work, IReadOnlyList<NamedLinear> group, IReadOnlyList<NamedLinear> active)
    {
        if (options.Schedule == OacSchedule.SequentialGroups)
            OutputAdaptiveHessian.Sums(work.Model, work.Block.Index, work.Block, work.Stream,
                active.Select(l => l.Name).ToHashSet(StringComparer.Ordinal), options, work.Contexts, work.Scratch, firstSequence,
                (_, sums) => Take(sums), work.Cancellation);
        var mine = new List<(string, Tensor)>();
        foreach (var l in active)
            if (_pending.Remove(l.Name, out var h)) mine.Add((l.Name, h));
        return new StatisticSums(mine, _sequences);
    }

    /// <summary>Each linear's H̄ = sum / (N·m), N the sequences of every shard.</summary>
    public GroupStatistics Scale(StatisticSums sums, IReadOnlyList<NamedLinear> active)
    {
        using (sums)
        {
            var h = new Dictionary<string, Tensor>(StringComparer.Ordinal);
            foreach (var l in active)
                if (sums.Take(l.Name) is { } sum) h[l.Name] = OutputAdaptiveHessian.Scale(sum, sums.Sequences, l.OutFeatures);
            return GroupStatistics.PerLinear(h);
        }
    }

    public void EndBlock(BlockWork work) { }
    public void Save(string folder) { }
    public void Restore(string folder, IReadOnlyList<long[]> sequences, int nextBlock) { }

    public void Dispose()
    {
        foreach (var t in _pending.Values) t.Dispose();
        _pending.Clear();
    }
}
