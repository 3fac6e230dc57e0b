using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using static DotQuant.Engine.Onnx.OnnxGraphBuilder;
using static TorchSharp.torch;

namespace DotQuant.Engine.Onnx;

/// <summary>What a model family puts in the decoder graph: its embedding, its block, its final norm and
/// head, and the constant tables (rotary) the package writer stores for it. One subclass per family,
/// each the engine's forward of that family op for op.</summary>
internal abstract class OnnxFamily(OnnxGraphBuilder g, ModelConfig c, Func<string, OnnxLinear> linear)
{
    public static readonly string[] ModelTypes = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3_text"];

    public static bool Covers(ModelConfig c) => ModelTypes.Contains(c.ModelType);

    public static OnnxFamily For(OnnxGraphBuilder g, ModelConfig c, Func<string, OnnxLinear> linear) => c.ModelType switch
    {
        "gemma2" or "gemma3_text" => new GemmaOnnxFamily(g, c, linear),
        _ => new LlamaOnnxFamily(g, c, linear),
    };

    /// <summary>The tables the graph reads, by initializer name ([positions, rotary dim] fp32).</summary>
    public static IEnumerable<(string Name, Tensor Table)> Tables(ModelConfig c) => c.ModelType switch
    {
        "gemma2" or "gemma3_text" => GemmaOnnxFamily.Tables(c),
        _ => LlamaOnnxFamily.Tables(c),
    };

    protected OnnxGraphBuilder G { get; } = g;
    protected ModelConfig C { get; } = c;

    public virtual string HeadWeight => C.TieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight";

    public virtual string Embed() => G.Node("Gather", "embed", ["model.embed_tokens.weight", "input_ids"])[0];

    public abstract string Block(int layer, string hidden);

    public abstract string FinalNorm(string hidden);

    public virtual string CapLogits(string logits) => logits;

    protected string Linear(string x, string name) => linear(name).Apply(G, x);

    /// <summary>q, k, v from separate projections or split from Phi-3's fused one ([q | k | v] columns).</summary>
    protected (string Q, string K, string V) Qkv(int i, string x, string prefix)
    {
        if (!C.FusedProjections)
            return (Linear(x, prefix + "self_attn.q_proj"), Linear(x, prefix + "self_attn.k_proj"), Linear(x, prefix + "self_attn.v_proj"));
        long qs = (long)C.NumHeads * C.HeadDim, kvs = (long)C.NumKvHeads * C.HeadDim;
        var parts = G.Node("Split", $"l{i}.qkv_split", [Linear(x, prefix + "self_attn.qkv_proj"), G.Int64s("qkv_sizes", qs, kvs, kvs)], 3, "", Int("axis", -1));
        return (parts[0], parts[1], parts[2]);
    }

    /// <summary>x·rsqrt(mean(x²) + ε)·w over the last axis, in the engine's order of operations.</summary>
    public static string RmsNorm(OnnxGraphBuilder g, ModelConfig c, string x, string weight, string name)
    {
        var sq = g.Op("Mul", name + ".sq", x, x);
        var mean = g.Node("ReduceMean", name + ".mean", [sq], 1, "", Ints("axes", -1), Int("keepdims", 1))[0];
        var rstd = g.Op("Reciprocal", name + ".rstd", g.Op("Sqrt", name + ".std", g.Op("Add", name + ".eps", mean, g.FloatScalar("rms_eps", (float)c.RmsNormEps))));
        return g.Op("Mul", name + ".scale", g.Op("Mul", name + ".norm", x, rstd), weight);
    }
}
