using DotQuant.Runtime;
using DotQuant.Engine.Gguf;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Engine.Imatrix;

/// <summary><c>hessian: imatrix</c>: each linear's statistics are the diagonal importance an importance
/// matrix file holds for its GGUF tensor (imp_j = Σx_j²/T, the diagonal of the layer-wise Hessian up to
/// scale), handed to the solver as a one-dimensional H. No calibration stream: the statistics were
/// collected before (by llama-imatrix or <c>dotnet quantize imatrix</c>). A linear the file has no entry
/// for is rounded without importance, as llama-quantize does.</summary>
public sealed class ImatrixHessian : IHessianSource
{
    readonly ImportanceMatrix _matrix;
    readonly IReadOnlyDictionary<string, string> _ggufNames;
    readonly string _path;

    public ImatrixHessian(string path, ModelConfig config, IWeightSource weights)
    {
        _path = path;
        _matrix = ImportanceMatrix.Load(path);
        _ggufNames = GgufArchitectures.Tensors(config, weights.Contains).ToDictionary(m => m.Source, m => m.Name, StringComparer.Ordinal);
    }

    public bool NeedsCalibration => false;

    /// <summary>True when llama-quantize would see an importance matrix (its type choices differ then).</summary>
    public bool HasEntries => _matrix.Entries.Count > 0;

    public void BeginBlock(BlockWork work) { }

    public GroupStatistics Group(BlockWork work, IReadOnlyList<NamedLinear> group, IReadOnlyList<NamedLinear> active)
    {
        var byLinear = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var lin in active)
            if (Importance(lin.Name + ".weight", lin.InFeatures) is { } imp)
                byLinear[lin.Name] = tensor(imp);
        return GroupStatistics.PerLinear(byLinear);
    }

    /// <summary>The importance of the tensor stored as <paramref name="source"/> with <paramref name="columns"/>
    /// input columns, or null when the file has none for it.</summary>
    public float[]? Importance(string source, long columns)
    {
        if (!_ggufNames.TryGetValue(source, out var name)) return null;
        var imp = _matrix.Importance(name);
        if (imp is null) return null;
        if (imp.Length != columns)
            throw new DotQuantException(ErrorCodes.ImatrixMismatch,
                $"{Path.GetFileName(_path)}: {name} has {imp.Length} importance values, the model's {source} has {columns} input columns (an imatrix of another model?)", _path);
        return imp;
    }

    public void EndBlock(BlockWork work) { }
    public void Save(string folder) { }
    public void Restore(string folder, IReadOnlyList<long[]> sequences, int nextBlock) { }
    public void Dispose() { }
}
