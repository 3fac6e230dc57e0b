using static TorchSharp.torch;

namespace DotQuant.Engine.Models;

/// <summary>A checkpoint whose linears are GPT-2's Conv1D modules, stored [in, out], seen [out, in] like
/// every other linear: calibrators, writers and GGUF all work on the usual orientation, and only this
/// view knows the checkpoint's. Other tensors pass through.</summary>
public sealed class Conv1DWeights(IWeightSource inner, Func<string, bool> isConv1D) : IWeightSource, IDisposable
{
    public string Directory => inner.Directory;
    public IReadOnlyList<string> Names => inner.Names;
    public bool Contains(string name) => inner.Contains(name);

    public TensorShape? Describe(string name)
    {
        var stored = inner.Describe(name);
        return stored is { Shape.Length: 2 } && isConv1D(name) ? stored with { Shape = [stored.Shape[1], stored.Shape[0]] } : stored;
    }

    public Tensor Load(string name, params long[] expectedShape)
    {
        if (!isConv1D(name)) return inner.Load(name, expectedShape);
        using var stored = inner.Load(name, expectedShape.Reverse().ToArray());
        return stored.t().contiguous();
    }

    public Tensor LoadStored(string name)
    {
        if (!isConv1D(name)) return inner.LoadStored(name);
        using var stored = inner.LoadStored(name);
        return stored.t().contiguous();
    }

    public Tensor LoadRows(string name, Tensor rows) =>
        isConv1D(name) ? ((IWeightSource)this).LoadRowsOfWhole(name, rows) : inner.LoadRows(name, rows);

    public void Dispose() => (inner as IDisposable)?.Dispose();
}
