using DotQuant.Engine.Calibration;
using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Engine.Hessians;

/// <summary>What a Hessian source works with for one block: the model (later blocks are loaded from it
/// on demand), the block being solved (its solved linears already hold their dequantized weights),
/// the quantized stream X_q at the block's input, and the run's scratch folder.</summary>
public sealed class BlockWork
{
    public required DecoderModel Model { get; init; }
    public required DecoderBlock Block { get; init; }
    public required ActivationStream Stream { get; init; }
    public required ForwardContexts Contexts { get; init; }
    /// <summary>Names of the linears that get quantized (others need no statistics).</summary>
    public required ISet<string> Planned { get; init; }
    public required string Scratch { get; init; }
    public Action<RunEvent>? Events { get; init; }
    public CancellationToken Cancellation { get; init; }
}

/// <summary>The statistics each linear of a group is solved with: H (and GPTAQ's D). Owned, disposed
/// after the group is solved.</summary>
public sealed class GroupStatistics : IDisposable
{
    readonly Dictionary<string, (Tensor H, Tensor? D)> _byLinear;
    readonly List<Tensor> _owned;

    GroupStatistics(Dictionary<string, (Tensor, Tensor?)> byLinear, List<Tensor> owned)
    {
        _byLinear = byLinear;
        _owned = owned;
    }

    /// <summary>One H (and D) for every linear of a group (they share their input).</summary>
    public static GroupStatistics Shared(IEnumerable<NamedLinear> linears, Tensor h, Tensor? d) =>
        new(linears.ToDictionary(l => l.Name, _ => (h, d)), d is null ? [h] : [h, d]);

    /// <summary>A Hessian per linear (output-adaptive).</summary>
    public static GroupStatistics PerLinear(IReadOnlyDictionary<string, Tensor> h) =>
        new(h.ToDictionary(kv => kv.Key, kv => (kv.Value, (Tensor?)null)), h.Values.ToList());

    public static GroupStatistics None { get; } = new([], []);

    public Tensor? H(NamedLinear linear) => _byLinear.TryGetValue(linear.Name, out var s) ? s.H : null;
    public Tensor? D(NamedLinear linear) => _byLinear.TryGetValue(linear.Name, out var s) ? s.D : null;

    /// <summary>Whether <paramref name="linear"/> is the last of the group to use its H, in the order
    /// <paramref name="solveOrder"/> (the solver may then consume it).</summary>
    public bool LastUser(NamedLinear linear, IReadOnlyList<NamedLinear> solveOrder)
    {
        var h = H(linear);
        return h is not null && solveOrder.SkipWhile(l => l.Name != linear.Name).Skip(1).All(l => !ReferenceEquals(H(l), h));
    }

    public void Dispose()
    {
        foreach (var t in _owned) t.Dispose();
        _owned.Clear();
    }
}

/// <summary>Where each linear's Hessian comes from — one of spec §2's statistics, behind the calls
/// the sequential driver makes per block: <see cref="BeginBlock"/>, then <see cref="Group"/> for each
/// true-sequential group, then <see cref="EndBlock"/> once the block is solved and X_q has advanced.
/// A new statistic is a new class; the driver does not change.</summary>
public interface IHessianSource : IDisposable
{
    /// <summary>False for round-to-nearest: no calibration stream and no forward passes at all.</summary>
    bool NeedsCalibration { get; }

    void BeginBlock(BlockWork work);

    /// <summary>Statistics of the <paramref name="active"/> (planned) linears of <paramref name="group"/>.</summary>
    GroupStatistics Group(BlockWork work, IReadOnlyList<NamedLinear> group, IReadOnlyList<NamedLinear> active);

    void EndBlock(BlockWork work);

    /// <summary>Moves the calibration stream through the solved block from state the source kept (staged
    /// calibration) and returns true, or returns false and the driver runs the block's forward.</summary>
    bool AdvanceStream(BlockWork work) => false;

    /// <summary>Saves what the source carries from block to block (GPTAQ's float stream) for a resume.</summary>
    void Save(string folder);

    /// <summary>Restores <see cref="Save"/>'s state before block <paramref name="nextBlock"/>.</summary>
    void Restore(string folder, IReadOnlyList<long[]> sequences, int nextBlock);

    /// <summary><paramref name="linear"/> was solved and computes with its quantized weight from now on
    /// (a distributed run hands the weight to its workers).</summary>
    void Solved(BlockWork work, NamedLinear linear) { }
}

/// <summary>A source whose statistics are sums over the calibration sequences, so shards of them can be
/// accumulated apart — a distributed run's workers — and added before the one scaling. Its
/// <see cref="IHessianSource.Group"/> is <see cref="Scale"/> of <see cref="Accumulate"/>.</summary>
public interface ISummedHessianSource : IHessianSource
{
    /// <summary>The unscaled fp64 sums of <paramref name="group"/>'s statistics (of its <paramref name="active"/>
    /// linears) over this stream's sequences.</summary>
    StatisticSums Accumulate(BlockWork work, IReadOnlyList<NamedLinear> group, IReadOnlyList<NamedLinear> active);

    /// <summary>The statistics the solvers use, from sums over every sequence (consumed).</summary>
    GroupStatistics Scale(StatisticSums sums, IReadOnlyList<NamedLinear> active);
}

/// <summary>Round-to-nearest: no statistics. With <paramref name="keepsStream"/> (a block transform reads
/// the calibration stream first: AWQ) the stream is kept and advanced, still without statistics.</summary>
public sealed class NoHessian(bool keepsStream = false) : IHessianSource
{
    public bool NeedsCalibration => keepsStream;
    public void BeginBlock(BlockWork work) { }
    public GroupStatistics Group(BlockWork work, IReadOnlyList<NamedLinear> group, IReadOnlyList<NamedLinear> active) => GroupStatistics.None;
    public void EndBlock(BlockWork work) { }
    public void Save(string folder) { }
    public void Restore(string folder, IReadOnlyList<long[]> sequences, int nextBlock) { }
    public void Dispose() { }
}
