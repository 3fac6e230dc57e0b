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
public sealed class OutputAdaptiveSource(OacOptions options) : IHessianSource
{
    readonly Dictionary<string, Tensor> _pending = new(StringComparer.Ordinal);
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
                Take(OutputAdaptiveHessian.Compute(work.Model, b, work.Block, work.Stream, PlannedIn(work, [b]), options, work.Contexts, work.Scratch, work.Cancellation));
                break;
            case OacSchedule.Once when !_onceDone:
                // From the embeddings through the float model; a resumed run recomputes the same H̄.
                using (var embedded = ActivationStream.Embed(work.Model, work.Stream.Ids.SelectMany(x => x).ToList(), work.Stream.Storage))
                    OutputAdaptiveHessian.Compute(work.Model, 0, null, embedded,
                        PlannedIn(work, Enumerable.Range(b, work.Model.BlockCount - b)), options, work.Contexts, work.Scratch, work.Cancellation,
                        (block, h) => Spill(work.Scratch, block, h));
                _onceDone = true;
                break;
            default:
                computed = false;
                break;
        }
        if (options.Schedule == OacSchedule.Once) Take(Unspill(work.Scratch, b));
        if (computed) work.Events?.Invoke(new ProgressEvent($"block {b}: output-adaptive Hessians in {sw.Elapsed.TotalSeconds:F1} s", b, sw.Elapsed.TotalSeconds));
    }

    static HashSet<string> PlannedIn(BlockWork work, IEnumerable<int> blocks) =>
        blocks.SelectMany(b => work.Model.LinearLayout(b).SelectMany(g => g)).Select(l => l.Name).Where(work.Planned.Contains).ToHashSet(StringComparer.Ordinal);

    void Take(Dictionary<string, Tensor> computed)
    {
        foreach (var (k, v) in computed) _pending[k] = v;
    }

    static string SpillFile(string scratch, int block) => Path.Combine(scratch, $"oac-hbar-{block}.safetensors");

    /// <summary>A block's H̄ to disk (fp32, exact), the tensors released.</summary>
    static void Spill(string scratch, int block, Dictionary<string, Tensor> h)
    {
        try
        {
            if (h.Count > 0) IO.SafeTensorsWriter.Write(SpillFile(scratch, block), h);
        }
        finally
        {
            foreach (var t in h.Values) t.Dispose();
        }
    }

    static Dictionary<string, Tensor> Unspill(string scratch, int block)
    {
        string file = SpillFile(scratch, block);
        if (!File.Exists(file)) return [];
        Dictionary<string, Tensor> h;
        using (var f = IO.SafeTensorsFile.Open(file))
            h = f.Tensors.Keys.ToDictionary(n => n, n => f.Load(n).DetachFromDisposeScope(), StringComparer.Ordinal);
        File.Delete(file);
        return h;
    }

    public GroupStatistics Group(BlockWork work, IReadOnlyList<NamedLinear> group, IReadOnlyList<NamedLinear> active)
    {
        if (options.Schedule == OacSchedule.SequentialGroups)
            Take(OutputAdaptiveHessian.Compute(work.Model, work.Block.Index, work.Block, work.Stream,
                active.Select(l => l.Name).ToHashSet(StringComparer.Ordinal), options, work.Contexts, work.Scratch, work.Cancellation));
        var mine = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var l in active)
            if (_pending.Remove(l.Name, out var h)) mine[l.Name] = h;
        return GroupStatistics.PerLinear(mine);
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
