using DotQuant.Engine.IO;
using static DotQuant.Engine.Onnx.OnnxGraphBuilder;

namespace DotQuant.Engine.Onnx;

/// <summary>GPT-2, as <see cref="Models.Gpt2Model"/> computes it: token plus learned position embeddings
/// (rows of wpe at position_ids), pre-LayerNorm blocks with biases everywhere, q/k/v split from c_attn,
/// causal attention without rotary, a gelu_new (tanh) MLP, ln_f and the tied head. Names keep the
/// checkpoint's <c>transformer.</c> prefix when it has one; Conv1D weights are stored like every other
/// linear (MatMulNBits codes, or [in, out] for MatMul — which is the Conv1D layout itself).</summary>
internal sealed class Gpt2OnnxFamily : OnnxFamily
{
    readonly string _prefix;
    readonly StandardAttention _attention;

    public Gpt2OnnxFamily(OnnxGraphBuilder g, ModelConfig c, Func<string, OnnxLinear> linear, string prefix) : base(g, c, linear)
    {
        _prefix = prefix;
        _attention = new StandardAttention(g, c, AttentionSettings.Unrotated(c));
    }

    public override string HeadWeight => C.TieWordEmbeddings ? _prefix + "wte.weight" : "lm_head.weight";

    public override string Embed()
    {
        var tokens = G.Node("Gather", "embed", [_prefix + "wte.weight", "input_ids"])[0];
        var positions = G.Node("Gather", "positions", [_prefix + "wpe.weight", "position_ids"])[0];
        return G.Op("Add", "embed_positions", tokens, positions);
    }

    public override string Block(int i, string x)
    {
        var g = G;
        string p = $"{_prefix}h.{i}.";
        var qkv = g.Node("Split", $"l{i}.qkv_split", [Linear(LayerNorm(x, p + "ln_1", $"l{i}.ln_1"), p + "attn.c_attn")], 3, "", Int("axis", -1));
        var attn = _attention.Attend(g, i, qkv[0], qkv[1], qkv[2], null, null);
        var h = g.Op("Add", $"l{i}.attn_residual", x, Linear(attn, p + "attn.c_proj"));
        var act = GeluTanh(Linear(LayerNorm(h, p + "ln_2", $"l{i}.ln_2"), p + "mlp.c_fc"), $"l{i}.gelu");
        return g.Op("Add", $"l{i}.mlp_residual", h, Linear(act, p + "mlp.c_proj"));
    }

    public override string FinalNorm(string hidden) => LayerNorm(hidden, _prefix + "ln_f", "ln_f");

    string LayerNorm(string x, string module, string name) =>
        G.Node("LayerNormalization", name, [x, module + ".weight", module + ".bias"], 1, "", Int("axis", -1), Float("epsilon", (float)C.RmsNormEps))[0];
}
