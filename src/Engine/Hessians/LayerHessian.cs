using DotQuant.Engine.Calibration;
using DotQuant.Engine.Diagnostics;
using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Engine.Hessians;

/// <summary>The layer-wise Hessian H = (2/N)·X_q X_qᵀ of a group's input (spec §2.1), captured from
/// the quantized stream one batch at a time through the partially solved block.</summary>
public sealed class LayerHessian : IHessianSource
{
    public bool NeedsCalibration => true;

    public void BeginBlock(BlockWork work) { }

    public GroupStatistics Group(BlockWork work, IReadOnlyList<NamedLinear> group, IReadOnlyList<NamedLinear> active)
    {
        using var stats = new LayerStatistics(group[0].InFeatures, withAsymmetry: false);
        for (int i = 0; i < work.Stream.Count; i++)
        {
            work.Cancellation.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            using var x = work.Stream.Input(i);
            using var input = InputCapture.Of(work.Block, group[0], x, work.Contexts.For(x.shape[1]));
            stats.Add(input);
        }
        var (h, _) = stats.Finish();
        return GroupStatistics.Shared(active, h, null);
    }

    public void EndBlock(BlockWork work) { }
    public void Save(string folder) { }
    public void Restore(string folder, IReadOnlyList<long[]> sequences, int nextBlock) { }
    public void Dispose() { }
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
