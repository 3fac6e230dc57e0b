using DotQuant.Engine.Calibration;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Engine.Hessians;

/// <summary>GPTAQ's statistics (spec §2.1, §4): H = (2/N)·X_q X_qᵀ from the quantized stream and
/// D = (2/N)·(X_f − X_q) X_qᵀ, where the float stream X_f runs through the block's original weights.
/// The source owns X_f and a float copy of the current block, and advances X_f at the block's end.</summary>
public sealed class AsymmetricHessian : ISummedHessianSource
{
    ActivationStream? _float;
    DecoderBlock? _floatBlock;

    public bool NeedsCalibration => true;

    public void BeginBlock(BlockWork work)
    {
        _float ??= work.Stream.Clone();          // X_f = X_q at the embeddings
        _floatBlock = work.Model.LoadBlock(work.Block.Index);
    }

    public GroupStatistics Group(BlockWork work, IReadOnlyList<NamedLinear> group, IReadOnlyList<NamedLinear> active)
    {
        using var stats = Collect(work, group);
        var (h, d) = stats.Finish();
        return GroupStatistics.Shared(active, h, d);
    }

    public StatisticSums Accumulate(BlockWork work, IReadOnlyList<NamedLinear> group, IReadOnlyList<NamedLinear> active)
    {
        using var stats = Collect(work, group);
        return stats.TakeSums();
    }

    public GroupStatistics Scale(StatisticSums sums, IReadOnlyList<NamedLinear> active) => LayerStatistics.Shared(sums, active);

    LayerStatistics Collect(BlockWork work, IReadOnlyList<NamedLinear> group)
    {
        var floatFirst = _floatBlock!.Linears.First(l => l.Name == group[0].Name);
        var stats = new LayerStatistics(group[0].InFeatures, withAsymmetry: true);
        try
        {
            Accumulate(work, group[0], floatFirst, stats);
            return stats;
        }
        catch
        {
            stats.Dispose();
            throw;
        }
    }

    void Accumulate(BlockWork work, NamedLinear first, NamedLinear floatFirst, LayerStatistics stats)
    {
        for (int i = 0; i < work.Stream.Count; i++)
        {
            work.Cancellation.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            using var xq = work.Stream.Input(i);
            using var xf = _float!.Input(i);
            using var inputQ = InputCapture.Of(work.Block, first, xq, work.Contexts.For(xq.shape[1]));
            using var inputF = InputCapture.Of(_floatBlock!, floatFirst, xf, work.Contexts.For(xf.shape[1]));
            stats.Add(inputQ, inputF);
        }
    }

    public void EndBlock(BlockWork work)
    {
        _float!.Advance(_floatBlock!, work.Contexts, work.Cancellation);
        _floatBlock!.Dispose();
        _floatBlock = null;
    }

    public void Save(string folder) => _float?.Save(Path.Combine(folder, "float-stream.safetensors"), "xf");

    public void Restore(string folder, IReadOnlyList<long[]> sequences, int nextBlock)
    {
        _float?.Dispose();
        _float = ActivationStream.Load(Path.Combine(folder, "float-stream.safetensors"), "xf", sequences, StorageOf(folder));
    }

    static ScalarType StorageOf(string folder)
    {
        using var f = SafeTensorsFile.Open(Path.Combine(folder, "float-stream.safetensors"));
        return f.Tensors.Values.First().DType.ToTorch();
    }

    public void Dispose()
    {
        _float?.Dispose();
        _floatBlock?.Dispose();
    }
}
