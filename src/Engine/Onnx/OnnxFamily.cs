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
    public static readonly string[] ModelTypes = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3_text", "gpt2"];

    public static bool Covers(ModelConfig c) => ModelTypes.Contains(c.ModelType);

    /// <param name="stored">Whether an initializer of that name was written (GPT-2's names may lack the transformer. prefix).</param>
    public static OnnxFamily For(OnnxGraphBuilder g, ModelConfig c, Func<string, OnnxLinear> linear, Func<string, bool> stored) => c.ModelType switch
    {
        "gemma2" or "gemma3_text" => new GemmaOnnxFamily(g, c, linear),
        "gpt2" => new Gpt2OnnxFamily(g, c, linear, stored("transformer.wte.weight") ? "transformer." : ""),
        _ => new LlamaOnnxFamily(g, c, linear),
    };

    /// <summary>The tables the graph reads, by initializer name ([positions, rotary dim] fp32).</summary>
    public static IEnumerable<(string Name, Tensor Table)> Tables(ModelConfig c) => c.ModelType switch
    {
        "gemma2" or "gemma3_text" => GemmaOnnxFamily.Tables(c),
        "gpt2" => [],
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

    /// <summary>0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), torch's gelu(approximate='tanh').</summary>
    protected string GeluTanh(string x, string name)
    {
        var g = G;
        var cube = g.Op("Mul", name + ".x3", g.Op("Mul", name + ".x2", x, x), x);
        var inner = g.Op("Mul", name + ".k", g.Op("Add", name + ".sum", x, g.Op("Mul", name + ".c", cube, g.FloatScalar("gelu_c", 0.044715f))), g.FloatScalar("gelu_k", (float)Math.Sqrt(2 / Math.PI)));
        var t = g.Op("Add", name + ".one_plus", g.Op("Tanh", name + ".tanh", inner), g.FloatScalar("one_f", 1f));
        return g.Op("Mul", name + ".half_x_t", g.Op("Mul", name + ".half_x", x, g.FloatScalar("half_f", 0.5f)), t);
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
