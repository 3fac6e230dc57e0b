using static TorchSharp.torch;

namespace DotQuant.Engine.Models;

/// <summary>Where an adapter gets its weights: a float checkpoint, or a quantized package that
/// dequantizes its linears on load.</summary>
public interface IWeightSource
{
    string Directory { get; }
    bool Contains(string name);
    /// <summary>A floating-point weight with the expected shape (DQ0124/DQ0125 otherwise).</summary>
    Tensor Load(string name, params long[] expectedShape);
    /// <summary>A tensor as stored (any dtype, no shape check): what a writer copies through.</summary>
    Tensor LoadStored(string name);
}
