using static TorchSharp.torch;

namespace DotQuant.Engine.Models;

/// <summary>A linear layer of a block, by its Hugging Face module name (e.g.
/// <c>model.layers.3.self_attn.q_proj</c>). Weights stay in the checkpoint's dtype and are upcast
/// to fp32 only while the block runs; the calibration pipeline swaps <see cref="Weight"/> for
/// the dequantized result.</summary>
public sealed class NamedLinear : IDisposable
{
    public string Name { get; }
    public Tensor Weight { get; private set; }      // [out, in]
    public Tensor? Bias { get; private set; }       // [out]

    public long InFeatures => Weight.shape[1];
    public long OutFeatures => Weight.shape[0];

    public NamedLinear(string name, Tensor weight, Tensor? bias)
    {
        Name = name;
        Weight = weight.DetachFromDisposeScope();
        Bias = bias?.DetachFromDisposeScope();
    }

    /// <summary>Replaces the weight (the old one is disposed). Shape must match.</summary>
    public void SetWeight(Tensor weight)
    {
        if (!weight.shape.SequenceEqual(Weight.shape))
            throw new ArgumentException($"{Name}: new weight shape [{string.Join(",", weight.shape)}] differs from [{string.Join(",", Weight.shape)}]");
        var old = Weight;
        Weight = weight.DetachFromDisposeScope();
        old.Dispose();
    }

    /// <summary>Puts <paramref name="weight"/> in place and hands back the previous weight
    /// undisposed (to run a block temporarily with other weights, e.g. the float originals).</summary>
    public Tensor ExchangeWeight(Tensor weight)
    {
        var old = Weight;
        Weight = weight;
        return old;
    }

    /// <summary>Sees each output while set (OAC reads the output gradients through it).</summary>
    public Action<Tensor>? OutputObserver { get; set; }

    /// <summary>y = x Wᵀ + b in fp32; temporaries belong to the caller's dispose scope.</summary>
    public Tensor Forward(Tensor x)
    {
        var y = nn.functional.linear(x, Weight.to(ScalarType.Float32), Bias?.to(ScalarType.Float32));
        OutputObserver?.Invoke(y);
        return y;
    }

    public void Dispose()
    {
        Weight.Dispose();
        Bias?.Dispose();
    }
}
