using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using static DotQuant.Engine.Onnx.OnnxGraphBuilder;
using static TorchSharp.torch;

namespace DotQuant.Engine.Onnx;

/// <summary>Llama, Qwen2 (q/k/v biases), Qwen3 (per-head q/k norms), Mistral (sliding window) and Phi-3
/// (fused projections, partial rotary, LongRoPE): RMSNorm, rotary attention
/// (<see cref="OnnxAttention.For"/>: GroupQueryAttention or standard ops), SwiGLU.</summary>
internal sealed class LlamaOnnxFamily : OnnxFamily
{
    readonly OnnxAttention _attention;

    public LlamaOnnxFamily(OnnxGraphBuilder g, ModelConfig c, Func<string, OnnxLinear> linear) : base(g, c, linear) =>
        _attention = OnnxAttention.For(g, c);

    /// <summary>The engine's rotary tables for all positions; LongRoPE's short and long ones both whole,
    /// since the graph switches at run time.</summary>
    public static new IEnumerable<(string Name, Tensor Table)> Tables(ModelConfig c)
    {
        using var rope = new Rope(c);
        var (cos, sin) = rope.Tables(0, c.MaxPositionEmbeddings, longFactors: false);
        yield return (OnnxAttention.CosTable, cos);
        yield return (OnnxAttention.SinTable, sin);
        if (!rope.HasLongFactors) yield break;
        var (lc, ls) = rope.Tables(0, c.MaxPositionEmbeddings, longFactors: true);
        yield return (OnnxAttention.LongCosTable, lc);
        yield return (OnnxAttention.LongSinTable, ls);
    }

    public override string Block(int i, string x)
    {
        var (g, c) = (G, C);
        string p = $"model.layers.{i}.";
        var (q, k, v) = Qkv(i, Norm(x, p + "input_layernorm.weight", $"l{i}.input_norm"), p);
        var attn = _attention.Attend(g, i, q, k, v, c.QkNorm ? p + "self_attn.q_norm.weight" : null, c.QkNorm ? p + "self_attn.k_norm.weight" : null);
        var h = g.Op("Add", $"l{i}.attn_residual", x, Linear(attn, p + "self_attn.o_proj"));

        var hn = Norm(h, p + "post_attention_layernorm.weight", $"l{i}.post_norm");
        string gate, up;
        if (c.FusedProjections)
        {
            var both = g.Node("Split", $"l{i}.gate_up_split", [Linear(hn, p + "mlp.gate_up_proj"), g.Int64s("gate_up_sizes", c.IntermediateSize, c.IntermediateSize)], 2, "", Int("axis", -1));
            (gate, up) = (both[0], both[1]);
        }
        else
            (gate, up) = (Linear(hn, p + "mlp.gate_proj"), Linear(hn, p + "mlp.up_proj"));
        var silu = g.Op("Mul", $"l{i}.silu", gate, g.Op("Sigmoid", $"l{i}.sigmoid", gate));
        var act = g.Op("Mul", $"l{i}.gated", silu, up);
        return g.Op("Add", $"l{i}.mlp_residual", h, Linear(act, p + "mlp.down_proj"));
    }

    public override string FinalNorm(string hidden) => Norm(hidden, "model.norm.weight", "final_norm");

    string Norm(string x, string weight, string name) => RmsNorm(G, C, x, weight, name);
}
