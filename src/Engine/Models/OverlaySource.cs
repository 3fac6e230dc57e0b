using static TorchSharp.torch;

namespace DotQuant.Engine.Models;

/// <summary>A weight source with some tensors replaced (a block transform's folded norms and scaled
/// weights), everything else read from the source beneath: what the writer stores for the block.
/// Replacements keep the stored dtype of the tensor they replace.</summary>
public sealed class OverlaySource(IWeightSource inner, IReadOnlyDictionary<string, Tensor> replaced) : IWeightSource
{
    public string Directory => inner.Directory;
    public IReadOnlyList<string> Names => inner.Names;
    public bool Contains(string name) => replaced.ContainsKey(name) || inner.Contains(name);

    public TensorShape? Describe(string name) => inner.Describe(name);

    public Tensor Load(string name, params long[] expectedShape)
    {
        if (!replaced.TryGetValue(name, out var t)) return inner.Load(name, expectedShape);
        if (expectedShape.Length > 0 && !t.shape.SequenceEqual(expectedShape))
            throw new ArgumentException($"{name}: the replacement is [{string.Join(",", t.shape)}], [{string.Join(",", expectedShape)}] was expected");
        return LoadStored(name);
    }

    public Tensor LoadStored(string name) =>
        replaced.TryGetValue(name, out var t) ? t.to(inner.Describe(name)?.DType ?? t.dtype, copy: true) : inner.LoadStored(name);

    public Tensor LoadRows(string name, Tensor rows)
    {
        if (!replaced.ContainsKey(name)) return inner.LoadRows(name, rows);
        using var all = LoadStored(name);
        return all.index_select(0, rows);
    }
}
