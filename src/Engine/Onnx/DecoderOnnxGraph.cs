using DotQuant.Engine.Diagnostics;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using Onnx;
using static DotQuant.Engine.Onnx.OnnxGraphBuilder;

namespace DotQuant.Engine.Onnx;

/// <summary>How a linear is stored in the ONNX file: a MatMulNBits weight (its three initializers) or a
/// float weight transposed to [in, out] for MatMul; and its bias, if any.</summary>
internal sealed record OnnxLinear(string Name, long In, long Out, NBitsShape? NBits, string? Bias)
{
    public static string QWeight(string linear) => linear + ".qweight";
    public static string Scales(string linear) => linear + ".scales";
    public static string QZeros(string linear) => linear + ".qzeros";
    /// <summary>A float linear's weight, stored [in, out].</summary>
    public static string Transposed(string linear) => linear + ".weight_t";
}

internal sealed record NBitsShape(int Bits, int BlockSize);

/// <summary>The decoder graph ONNX Runtime GenAI runs for the Llama family (Llama, Qwen2, Qwen3, Mistral,
/// Phi-3): inputs input_ids, attention_mask, position_ids and past_key_values.{i}.key/value
/// [batch, kv heads, past, head size]; outputs logits [batch, seq, vocab] and present.{i}.key/value.
/// Built from standard ops (any head size; ORT's GroupQueryAttention needs head size % 16 == 0) and
/// com.microsoft.MatMulNBits for every quantized linear, in fp32 like the engine's evaluation: RMSNorm as
/// x·rsqrt(mean(x²)+ε)·w, rotary embedding in the rotate_half layout from cos/sin tables gathered at
/// position_ids, causal (and sliding-window) masking from the positions and attention_mask.</summary>
internal static class DecoderOnnxGraph
{
    /// <summary>DQ0122 unless the graph can express the model exactly.</summary>
    public static void Check(ModelConfig c, string source)
    {
        string? why = c.ModelType is not ("llama" or "qwen2" or "qwen3" or "mistral" or "phi3")
            ? $"model_type '{c.ModelType}' (the ONNX graph covers llama, qwen2, qwen3, mistral and phi3 so far)"
            : null;
        if (why is not null)
            throw new DotQuantException(ErrorCodes.UnsupportedModelType, $"format 'onnx' cannot express {why} yet; use format 'gguf' or 'dotquant'", source);
    }

    public static GraphProto Build(ModelConfig c, Func<string, OnnxLinear> linear)
    {
        var g = new OnnxGraphBuilder();
        const TensorProto.Types.DataType F = TensorProto.Types.DataType.Float, I64 = TensorProto.Types.DataType.Int64;
        g.Input("input_ids", I64, "batch_size", "sequence_length");
        g.Input("attention_mask", I64, "batch_size", "total_sequence_length");
        g.Input("position_ids", I64, "batch_size", "sequence_length");
        for (int i = 0; i < c.NumLayers; i++)
        {
            g.Input($"past_key_values.{i}.key", F, "batch_size", c.NumKvHeads, "past_sequence_length", c.HeadDim);
            g.Input($"past_key_values.{i}.value", F, "batch_size", c.NumKvHeads, "past_sequence_length", c.HeadDim);
        }
        g.Output("logits", F, "batch_size", "sequence_length", c.VocabSize);

        var ctx = new Context(g, c, linear, OnnxAttention.For(g, c));
        var h = g.Node("Gather", "embed", ["model.embed_tokens.weight", "input_ids"])[0];
        for (int i = 0; i < c.NumLayers; i++)
        {
            g.Output($"present.{i}.key", F, "batch_size", c.NumKvHeads, "total_sequence_length", c.HeadDim);
            g.Output($"present.{i}.value", F, "batch_size", c.NumKvHeads, "total_sequence_length", c.HeadDim);
            h = Block(ctx, i, h);
        }
        var normed = RmsNorm(ctx, h, "model.norm.weight", "final_norm");
        // The head as Gemm with transB over the stored [vocab, hidden] rows (tied embeddings need no copy).
        var flat = g.Op("Reshape", "head_flatten", normed, g.Int64s("head_flat_shape", -1, c.HiddenSize));
        var head = c.TieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight";
        var logits2d = g.Node("Gemm", "lm_head", [flat, head], 1, "", Int("transB", 1))[0];
        var batchSeq = g.Node("Slice", "batch_seq", [g.Op("Shape", "ids_shape", "input_ids"), g.Int64s("zero", 0), g.Int64s("two", 2)])[0];
        var shape = g.Node("Concat", "logits_shape", [batchSeq, g.Int64s("vocab", c.VocabSize)], 1, "", Int("axis", 0))[0];
        g.NodeTo("Reshape", "logits", [logits2d, shape]);
        return g.Graph;
    }

    sealed record Context(OnnxGraphBuilder G, ModelConfig C, Func<string, OnnxLinear> Linear, OnnxAttention Attention);

    static string Block(Context ctx, int i, string x)
    {
        var (g, c) = (ctx.G, ctx.C);
        string p = $"model.layers.{i}.";
        var xn = RmsNorm(ctx, x, p + "input_layernorm.weight", $"l{i}.input_norm");
        string q, k, v;
        if (c.FusedProjections)
        {
            var qkv = Linear(ctx, xn, p + "self_attn.qkv_proj");
            long qs = (long)c.NumHeads * c.HeadDim, kvs = (long)c.NumKvHeads * c.HeadDim;
            var parts = g.Node("Split", $"l{i}.qkv_split", [qkv, g.Int64s("qkv_sizes", qs, kvs, kvs)], 3, "", Int("axis", -1));
            (q, k, v) = (parts[0], parts[1], parts[2]);
        }
        else
            (q, k, v) = (Linear(ctx, xn, p + "self_attn.q_proj"), Linear(ctx, xn, p + "self_attn.k_proj"), Linear(ctx, xn, p + "self_attn.v_proj"));
        var attn = ctx.Attention.Attend(g, i, q, k, v, c.QkNorm ? p + "self_attn.q_norm.weight" : null, c.QkNorm ? p + "self_attn.k_norm.weight" : null);
        var h = g.Op("Add", $"l{i}.attn_residual", x, Linear(ctx, attn, p + "self_attn.o_proj"));

        var hn = RmsNorm(ctx, h, p + "post_attention_layernorm.weight", $"l{i}.post_norm");
        string gate, up;
        if (c.FusedProjections)
        {
            var both = g.Node("Split", $"l{i}.gate_up_split", [Linear(ctx, hn, p + "mlp.gate_up_proj"), g.Int64s("gate_up_sizes", c.IntermediateSize, c.IntermediateSize)], 2, "", Int("axis", -1));
            (gate, up) = (both[0], both[1]);
        }
        else
            (gate, up) = (Linear(ctx, hn, p + "mlp.gate_proj"), Linear(ctx, hn, p + "mlp.up_proj"));
        var silu = g.Op("Mul", $"l{i}.silu", gate, g.Op("Sigmoid", $"l{i}.sigmoid", gate));
        var act = g.Op("Mul", $"l{i}.gated", silu, up);
        return g.Op("Add", $"l{i}.mlp_residual", h, Linear(ctx, act, p + "mlp.down_proj"));
    }

    static string Linear(Context ctx, string x, string name)
    {
        var g = ctx.G;
        var l = ctx.Linear(name);
        string y = l.NBits is { } nb
            ? g.Node("MatMulNBits", name, [x, OnnxLinear.QWeight(name), OnnxLinear.Scales(name), OnnxLinear.QZeros(name)], 1, MicrosoftDomain,
                Int("K", l.In), Int("N", l.Out), Int("bits", nb.Bits), Int("block_size", nb.BlockSize))[0]
            : g.Op("MatMul", name, x, OnnxLinear.Transposed(name));
        return l.Bias is null ? y : g.Op("Add", name + ".bias_add", y, l.Bias);
    }

    /// <summary>x·rsqrt(mean(x²) + ε)·w over the last axis, in the engine's order of operations.</summary>
    static string RmsNorm(Context ctx, string x, string weight, string name) => RmsNorm(ctx.G, ctx.C, x, weight, name);

    public static string RmsNorm(OnnxGraphBuilder g, ModelConfig c, string x, string weight, string name)
    {
        var sq = g.Op("Mul", name + ".sq", x, x);
        var mean = g.Node("ReduceMean", name + ".mean", [sq], 1, "", Ints("axes", -1), Int("keepdims", 1))[0];
        var rstd = g.Op("Reciprocal", name + ".rstd", g.Op("Sqrt", name + ".std", g.Op("Add", name + ".eps", mean, g.FloatScalar("rms_eps", (float)c.RmsNormEps))));
        return g.Op("Mul", name + ".scale", g.Op("Mul", name + ".norm", x, rstd), weight);
    }
}
