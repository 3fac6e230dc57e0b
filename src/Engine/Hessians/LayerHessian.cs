using DotQuant.Engine.Calibration;
using DotQuant.Runtime;
using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Engine.Hessians;

/// <summary>The layer-wise Hessian H = (2/N)·X_q X_qᵀ of a group's input (spec §2.1), captured from
/// the quantized stream one batch at a time through the partially solved block.
/// Staged (when the memory plan has room for the states): each batch's state — residual and next group's input — is kept between groups and carried
/// one group further once that group is solved, and the block output comes from the last state, so
/// every linear runs once per batch. Otherwise each group's input is recomputed from the block input
/// (<see cref="InputCapture"/>). Both give the same bits: the forward is the stages composed.</summary>
public sealed class LayerHessian(bool staged = false) : ISummedHessianSource
{
    BlockState?[]? _states;
    int _stateGroup;            // the group whose input _states hold

    public bool NeedsCalibration => true;

    public void BeginBlock(BlockWork work)
    {
        DropStates();
        if (staged) _states = new BlockState?[work.Stream.Count];
    }

    public GroupStatistics Group(BlockWork work, IReadOnlyList<NamedLinear> group, IReadOnlyList<NamedLinear> active)
    {
        using var stats = Collect(work, group);
        var (h, _) = stats.Finish();
        return GroupStatistics.Shared(active, h, null);
    }

    public StatisticSums Accumulate(BlockWork work, IReadOnlyList<NamedLinear> group, IReadOnlyList<NamedLinear> active)
    {
        using var stats = Collect(work, group);
        return stats.TakeSums();
    }

    public GroupStatistics Scale(StatisticSums sums, IReadOnlyList<NamedLinear> active) => LayerStatistics.Shared(sums, active);

    LayerStatistics Collect(BlockWork work, IReadOnlyList<NamedLinear> group)
    {
        var stats = new LayerStatistics(group[0].InFeatures, withAsymmetry: false);
        try
        {
            Accumulate(work, group, stats);
            return stats;
        }
        catch
        {
            stats.Dispose();
            throw;
        }
    }

    void Accumulate(BlockWork work, IReadOnlyList<NamedLinear> group, LayerStatistics stats)
    {
        int index = IndexOf(work.Block, group);
        for (int i = 0; i < work.Stream.Count; i++)
        {
            work.Cancellation.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            if (_states is not null)
            {
                stats.Add(StateAt(work, i, index).Input);
                continue;
            }
            using var x = work.Stream.Input(i);
            using var input = InputCapture.Of(work.Block, group[0], x, work.Contexts.For(x.shape[1]));
            stats.Add(input);
        }
        if (_states is not null) _stateGroup = index;
    }

    /// <summary>Batch <paramref name="i"/>'s state at group <paramref name="group"/>'s input: begun from the
    /// stream, or carried through the groups solved since.</summary>
    BlockState StateAt(BlockWork work, int i, int group)
    {
        var stages = work.Block.Stages;
        int from = _stateGroup;
        if (_states![i] is null)
        {
            using var x = work.Stream.Input(i);
            _states[i] = stages.Begin(x, work.Contexts.For(x.shape[1]));
            from = 0;
        }
        for (int g = from; g < group; g++) Carry(stages, work, i, g);
        return _states[i]!;
    }

    void Carry(IStagedBlock stages, BlockWork work, int i, int group)
    {
        var state = _states![i]!;
        _states[i] = stages.Next(group, state, work.Contexts.For(state.Input.shape[1]));
        state.Dispose();
    }

    public bool AdvanceStream(BlockWork work)
    {
        if (_states is null || _states.Any(s => s is null)) return false;
        var stages = work.Block.Stages;
        int last = work.Block.LinearGroups.Count - 1;
        for (int i = 0; i < _states.Length; i++)
        {
            work.Cancellation.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            for (int g = _stateGroup; g < last; g++) Carry(stages, work, i, g);
            var state = _states[i]!;
            using var output = stages.Finish(state, work.Contexts.For(state.Input.shape[1]));
            work.Stream.Replace(i, output);
            state.Dispose();
            _states[i] = null;
        }
        _states = null;
        return true;
    }

    /// <summary>The index of <paramref name="group"/> among the block's true-sequential groups (by its first linear).</summary>
    internal static int IndexOf(DecoderBlock block, IReadOnlyList<NamedLinear> group)
    {
        var groups = block.LinearGroups;
        for (int g = 0; g < groups.Count; g++)
            if (groups[g].Count > 0 && groups[g][0].Name == group[0].Name) return g;
        throw new DotQuantException(ErrorCodes.Internal, $"block {block.Index} has no group starting with {group[0].Name}");
    }

    void DropStates()
    {
        if (_states is not null) foreach (var s in _states) s?.Dispose();
        _states = null;
        _stateGroup = 0;
    }

    public void EndBlock(BlockWork work) => DropStates();
    public void Save(string folder) { }
    public void Restore(string folder, IReadOnlyList<long[]> sequences, int nextBlock) { }
    public void Dispose() => DropStates();
}

/// <summary>Runs a block until one linear receives its input and returns that input (the rest of the
/// block is not computed).</summary>
public static class InputCapture
{
    sealed class CaptureComplete : Exception;

    public static Tensor Of(DecoderBlock block, NamedLinear target, Tensor x, ForwardContext ctx)
    {
        Tensor? captured = null;
        try
        {
            using var output = block.Forward(x, ctx, (lin, input) =>
            {
                if (lin.Name != target.Name) return;
                captured = input.clone().DetachFromDisposeScope();
                throw new CaptureComplete();
            });
        }
        catch (CaptureComplete)
        {
        }
        return captured ?? throw new DotQuantException(ErrorCodes.Internal, $"block {block.Index} never called {target.Name}");
    }
}
