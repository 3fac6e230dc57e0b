using static TorchSharp.torch;

namespace DotQuant.Engine.Models;

/// <summary>Loads one block's tensors from a weight source and disposes whatever it loaded if the block
/// cannot be completed (a missing or misshapen tensor halfway through), so a failed load leaks nothing.
/// Every family's <see cref="DecoderModel.LoadBlock"/> builds its block through one.</summary>
public sealed class BlockLoader(IWeightSource weights)
{
    readonly List<IDisposable> _loaded = [];

    public Tensor Tensor(string name, params long[] shape)
    {
        var t = weights.Load(name, shape).DetachFromDisposeScope();
        _loaded.Add(t);
        return t;
    }

    public NamedLinear Linear(LinearSpec s, bool bias)
    {
        var linear = new NamedLinear(s.Name, Tensor(s.Name + ".weight", s.OutFeatures, s.InFeatures), bias ? Tensor(s.Name + ".bias", s.OutFeatures) : null);
        _loaded.Add(linear);
        return linear;
    }

    /// <summary>Runs <paramref name="build"/>; on failure disposes every tensor and linear loaded so far
    /// (a linear owns its weight and bias; disposing a tensor twice is harmless).</summary>
    public T Build<T>(Func<BlockLoader, T> build)
    {
        try
        {
            return build(this);
        }
        catch
        {
            foreach (var x in _loaded) x.Dispose();
            throw;
        }
    }
}

/// <summary>The linears of a Llama-style block by Hugging Face name, in true-sequential groups (those sharing
/// an input together): separate q/k/v and gate/up, or Phi-3's fused qkv_proj and gate_up_proj.</summary>
public static class LlamaLayout
{
    public static IReadOnlyList<IReadOnlyList<LinearSpec>> Of(IO.ModelConfig c, int i)
    {
        long h = c.HiddenSize, q = (long)c.NumHeads * c.HeadDim, kv = (long)c.NumKvHeads * c.HeadDim, f = c.IntermediateSize;
        string p = $"model.layers.{i}.";
        if (c.FusedProjections)
            return
            [
                [new(p + "self_attn.qkv_proj", q + 2 * kv, h)],
                [new(p + "self_attn.o_proj", h, q)],
                [new(p + "mlp.gate_up_proj", 2 * f, h)],
                [new(p + "mlp.down_proj", h, f)],
            ];
        return
        [
            [new(p + "self_attn.q_proj", q, h), new(p + "self_attn.k_proj", kv, h), new(p + "self_attn.v_proj", kv, h)],
            [new(p + "self_attn.o_proj", h, q)],
            [new(p + "mlp.gate_proj", f, h), new(p + "mlp.up_proj", f, h)],
            [new(p + "mlp.down_proj", h, f)],
        ];
    }
}
