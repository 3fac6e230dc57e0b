using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace DotQuant.Engine.Quantizers;

/// <summary>What every solver returns for one linear: the weight it stands for, the tensors the
/// native format stores, and its bit cost both as the method's paper counts it and as stored.</summary>
public abstract class SolvedLinear : IDisposable
{
    /// <summary>The layer's "kind" in dotquant.json: grid (RTN/GPTQ/GPTAQ), spqr or billm.</summary>
    public abstract string Kind { get; }
    public abstract long OutFeatures { get; }
    public abstract long InFeatures { get; }
    /// <summary>tr(ΔW H_λ ΔWᵀ) on the statistics the solver used; NaN for RTN.</summary>
    public double Loss { get; init; } = double.NaN;
    /// <summary>The damping fraction that made H_λ factorizable (after retries).</summary>
    public double DampUsed { get; init; }

    /// <summary>The weight the package stands for, exactly as the runtime will rebuild it.</summary>
    public abstract Tensor Dequantize(ScalarType dtype = ScalarType.Float32);

    /// <summary>Average bits per weight as the method's paper reports them (SpQR eq. 4, BiLLM's
    /// N_param, the integer width for grids).</summary>
    public abstract double PaperBits { get; }

    /// <summary>The native format's tensors for this layer (names start with <paramref name="prefix"/>).</summary>
    public abstract void Pack(IDictionary<string, Tensor> tensors, string prefix);

    /// <summary>Extra fields of the layer's dotquant.json entry, enough for the reader to check shapes.</summary>
    public virtual JsonObject Describe() => new();

    /// <summary>Every bit the native format stores for this layer, per weight.</summary>
    public double StoredBits
    {
        get
        {
            var t = new Dictionary<string, Tensor>();
            try
            {
                Pack(t, "x");
                return t.Values.Sum(v => (double)v.numel() * v.element_size() * 8) / (OutFeatures * InFeatures);
            }
            finally
            {
                foreach (var v in t.Values) v.Dispose();
            }
        }
    }

    public abstract void Dispose();
}
