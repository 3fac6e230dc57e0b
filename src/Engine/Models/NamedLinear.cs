using DotQuant.Engine.Quantizers;
using static TorchSharp.torch;

namespace DotQuant.Engine.Models;

/// <summary>A linear layer of a block, by its Hugging Face module name (e.g.
/// <c>model.layers.3.self_attn.q_proj</c>). Weights stay in the checkpoint's dtype and are upcast
/// to fp32 only for the product. Once calibration has solved it, the linear holds its
/// <see cref="SolvedLinear"/> (codes and grids, about a byte per weight) and computes with the
/// dequantized weight, rebuilt for each product — the exact values the package stores, without
/// keeping an fp32 copy of every solved linear of the block.</summary>
public sealed class NamedLinear : IDisposable
{
    Tensor? _weight;

    public string Name { get; }
    public long InFeatures { get; }
    public long OutFeatures { get; }
    public Tensor? Bias { get; private set; }       // [out]
    /// <summary>The quantized weight this linear computes with, once solved (owned).</summary>
    public SolvedLinear? Solved { get; private set; }

    /// <summary>The weight [out, in] as loaded (not available once the linear is solved).</summary>
    public Tensor Weight => _weight ?? throw new InvalidOperationException($"{Name} computes with its quantized weight now (Solved)");

    public NamedLinear(string name, Tensor weight, Tensor? bias)
    {
        Name = name;
        _weight = weight.DetachFromDisposeScope();
        Bias = bias?.DetachFromDisposeScope();
        OutFeatures = weight.shape[0];
        InFeatures = weight.shape[1];
    }

    /// <summary>Replaces the weight (the old one is disposed). Shape must match.</summary>
    public void SetWeight(Tensor weight)
    {
        if (weight.shape[0] != OutFeatures || weight.shape[1] != InFeatures)
            throw new ArgumentException($"{Name}: new weight shape [{string.Join(",", weight.shape)}] differs from [{OutFeatures},{InFeatures}]");
        var old = _weight;
        _weight = weight.DetachFromDisposeScope();
        old?.Dispose();
        Solved?.Dispose();
        Solved = null;
    }

    /// <summary>Divides output rows [<paramref name="first"/>, first + s.Length) of the weight (and bias) by
    /// <paramref name="s"/> (AWQ folding a scale into the op before the next linear); fp32 copies.</summary>
    public void DivideOutputRows(long first, Tensor s)
    {
        using var scope = NewDisposeScope();
        var w = Weight.to(ScalarType.Float32, copy: true);
        w.narrow(0, first, s.shape[0]).div_(s.to(ScalarType.Float32).unsqueeze(1));
        if (Bias is { } bias)
        {
            var b = bias.to(ScalarType.Float32, copy: true);
            b.narrow(0, first, s.shape[0]).div_(s.to(ScalarType.Float32));
            bias.Dispose();
            Bias = b.DetachFromDisposeScope();
        }
        SetWeight(w);
    }

    /// <summary>The tensors the checkpoint stores for this linear, with their current values.</summary>
    public IReadOnlyDictionary<string, Tensor> Stored()
    {
        var d = new Dictionary<string, Tensor> { [Name + ".weight"] = Weight };
        if (Bias is { } b) d[Name + ".bias"] = b;
        return d;
    }

    /// <summary>From now on the linear computes with <paramref name="solved"/>'s weights, which it owns;
    /// the loaded weight is released.</summary>
    public void UseSolved(SolvedLinear solved)
    {
        if (solved.OutFeatures != OutFeatures || solved.InFeatures != InFeatures)
            throw new ArgumentException($"{Name}: solved weight is [{solved.OutFeatures},{solved.InFeatures}], expected [{OutFeatures},{InFeatures}]");
        _weight?.Dispose();
        _weight = null;
        Solved?.Dispose();
        Solved = solved;
    }

    /// <summary>Puts <paramref name="weight"/> in place and hands back the previous weight
    /// undisposed (to run a block temporarily with other weights, e.g. fp32 leaves for gradients).</summary>
    public Tensor ExchangeWeight(Tensor weight)
    {
        var old = Weight;
        _weight = weight;
        return old;
    }

    /// <summary>Sees each output while set (OAC reads the output gradients through it).</summary>
    public Action<Tensor>? OutputObserver { get; set; }

    /// <summary>y = x Wᵀ + b in fp32 (the result belongs to the caller's dispose scope). A bf16/fp16 or
    /// quantized weight is made fp32 for this product only and released at once (autograd keeps its
    /// own reference when it needs one).</summary>
    public Tensor Forward(Tensor x)
    {
        using var w = Solved is not null ? Solved.Dequantize()
            : Weight.dtype == ScalarType.Float32 ? null : Weight.to(ScalarType.Float32);
        using var b = Bias is null || Bias.dtype == ScalarType.Float32 ? null : Bias.to(ScalarType.Float32);
        var y = nn.functional.linear(x, w ?? Weight, b ?? Bias);
        OutputObserver?.Invoke(y);
        return y;
    }

    public void Dispose()
    {
        _weight?.Dispose();
        Bias?.Dispose();
        Solved?.Dispose();
    }
}
