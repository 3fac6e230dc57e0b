using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Engine.Onnx;

/// <summary>Gemma 2 and Gemma 3 (text), as <see cref="GemmaModel"/> computes them: embeddings × √hidden,
/// RMSNorm as x̂·(1 + w) before and after attention and the MLP, attention scaled by
/// 1/√query_pre_attn_scalar and soft-capped (Gemma 2), sliding-window layers rotating with the local
/// base (Gemma 3), per-head q/k norms (Gemma 3), GeLU-tanh gating, the embedding as head and soft-capped
/// final logits (Gemma 2). Attention is standard ops (the soft cap sits between the scaled scores and
/// the mask).</summary>
internal sealed class GemmaOnnxFamily : OnnxFamily
{
    readonly GemmaSettings _gemma;
    readonly StandardAttention _attention;

    public GemmaOnnxFamily(OnnxGraphBuilder g, ModelConfig c, Func<string, OnnxLinear> linear) : base(g, c, linear)
    {
        _gemma = c.Gemma!;
        _attention = new StandardAttention(g, c, new AttentionSettings(
            (float)(1.0 / Math.Sqrt(_gemma.QueryPreAttnScalar)), _gemma.AttnSoftcap, _gemma.SlidingWindow, layer => _gemma.SlidingLayers[layer], LocalRope: true,
            (gb, x, w, name) => Norm(gb, c, x, w, name)));
    }

    /// <summary>The global layers' tables (with the config's rope_scaling) and the sliding layers' (local
    /// base, no scaling; Gemma 2's equal the global ones).</summary>
    public static new IEnumerable<(string Name, Tensor Table)> Tables(ModelConfig c)
    {
        using (var rope = new Rope(c))
        {
            var (cos, sin) = rope.Tables(0, c.MaxPositionEmbeddings);
            yield return (OnnxAttention.CosTable, cos);
            yield return (OnnxAttention.SinTable, sin);
        }
        using var local = new Rope(c with { RopeTheta = c.Gemma!.LocalRopeTheta, RopeScaling = null });
        var (lc, ls) = local.Tables(0, c.MaxPositionEmbeddings);
        yield return (StandardAttention.LocalCosTable, lc);
        yield return (StandardAttention.LocalSinTable, ls);
    }

    public override string HeadWeight => "model.embed_tokens.weight";

    public override string Embed() => G.Op("Mul", "embed_scale", base.Embed(), G.FloatScalar("sqrt_hidden", (float)Math.Sqrt(C.HiddenSize)));

    public override string Block(int i, string x)
    {
        var g = G;
        string p = $"model.layers.{i}.";
        var (q, k, v) = Qkv(i, Norm(x, p + "input_layernorm.weight", $"l{i}.input_norm"), p);
        var attn = _attention.Attend(g, i, q, k, v, C.QkNorm ? p + "self_attn.q_norm.weight" : null, C.QkNorm ? p + "self_attn.k_norm.weight" : null);
        var h = g.Op("Add", $"l{i}.attn_residual", x, Norm(Linear(attn, p + "self_attn.o_proj"), p + "post_attention_layernorm.weight", $"l{i}.post_attn_norm"));

        var hn = Norm(h, p + "pre_feedforward_layernorm.weight", $"l{i}.pre_ffw_norm");
        var act = g.Op("Mul", $"l{i}.gated", GeluTanh(Linear(hn, p + "mlp.gate_proj"), $"l{i}.gelu"), Linear(hn, p + "mlp.up_proj"));
        return g.Op("Add", $"l{i}.mlp_residual", h, Norm(Linear(act, p + "mlp.down_proj"), p + "post_feedforward_layernorm.weight", $"l{i}.post_ffw_norm"));
    }

    public override string FinalNorm(string hidden) => Norm(hidden, "model.norm.weight", "final_norm");

    public override string CapLogits(string logits) =>
        _gemma.FinalSoftcap is double cap ? StandardAttention.SoftCap(G, logits, cap, "final_softcap") : logits;

    string Norm(string x, string weight, string name) => Norm(G, C, x, weight, name);

    /// <summary>x̂·(1 + w) (1 + w folds to a constant in ORT).</summary>
    static string Norm(OnnxGraphBuilder g, ModelConfig c, string x, string weight, string name) =>
        RmsNorm(g, c, x, g.Op("Add", name + ".one_plus_w", weight, g.FloatScalar("one_f", 1f)), name);
}
