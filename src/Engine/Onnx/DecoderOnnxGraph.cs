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
    public const string CosTable = "rotary.cos";
    public const string SinTable = "rotary.sin";
    /// <summary>LongRoPE's tables with the long factors (used once the total length passes the original context).</summary>
    public const string LongCosTable = "rotary.cos_long";
    public const string LongSinTable = "rotary.sin_long";

    public static bool IsLongRope(ModelConfig c) => c.RopeScaling is { Type: "longrope" };

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

        var (allowed, total) = Mask(g, c);
        var ctx = new Context(g, c, linear, allowed, Rotary(g, c, total));
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

    sealed record Context(OnnxGraphBuilder G, ModelConfig C, Func<string, OnnxLinear> Linear, string Allowed, (string Cos, string Sin) Rotary);

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
        q = Heads(ctx, q, c.NumHeads, c.QkNorm ? p + "self_attn.q_norm.weight" : null, $"l{i}.q");
        k = Heads(ctx, k, c.NumKvHeads, c.QkNorm ? p + "self_attn.k_norm.weight" : null, $"l{i}.k");
        v = Heads(ctx, v, c.NumKvHeads, null, $"l{i}.v", transposeOnly: true);
        q = Rotate(ctx, q, $"l{i}.q_rope");
        k = Rotate(ctx, k, $"l{i}.k_rope");
        g.NodeTo("Concat", $"present.{i}.key", [$"past_key_values.{i}.key", k], "", Int("axis", 2));
        g.NodeTo("Concat", $"present.{i}.value", [$"past_key_values.{i}.value", v], "", Int("axis", 2));
        var ke = RepeatKv(ctx, $"present.{i}.key", $"l{i}.k_repeat");
        var ve = RepeatKv(ctx, $"present.{i}.value", $"l{i}.v_repeat");

        var kt = g.Node("Transpose", $"l{i}.k_t", [ke], 1, "", Ints("perm", 0, 1, 3, 2))[0];
        var scores = g.Op("Mul", $"l{i}.scaled", g.Op("MatMul", $"l{i}.qk", q, kt), g.FloatScalar("attn_scale", (float)(1.0 / Math.Sqrt(c.HeadDim))));
        var masked = g.Op("Where", $"l{i}.masked", ctx.Allowed, scores, g.FloatScalar("mask_min", float.MinValue));
        var probs = g.Node("Softmax", $"l{i}.softmax", [masked], 1, "", Int("axis", -1))[0];
        var attn = g.Op("MatMul", $"l{i}.attn", probs, ve);
        attn = g.Node("Transpose", $"l{i}.attn_t", [attn], 1, "", Ints("perm", 0, 2, 1, 3))[0];
        attn = g.Op("Reshape", $"l{i}.attn_merge", attn, g.Int64s("merge_heads", 0, 0, (long)c.NumHeads * c.HeadDim));
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
    static string RmsNorm(Context ctx, string x, string weight, string name)
    {
        var g = ctx.G;
        var sq = g.Op("Mul", name + ".sq", x, x);
        var mean = g.Node("ReduceMean", name + ".mean", [sq], 1, "", Ints("axes", -1), Int("keepdims", 1))[0];
        var rstd = g.Op("Reciprocal", name + ".rstd", g.Op("Sqrt", name + ".std", g.Op("Add", name + ".eps", mean, g.FloatScalar("rms_eps", (float)ctx.C.RmsNormEps))));
        return g.Op("Mul", name + ".scale", g.Op("Mul", name + ".norm", x, rstd), weight);
    }

    /// <summary>[B, S, heads·d] → [B, heads, S, d], with Qwen3's per-head RMSNorm before the transpose.</summary>
    static string Heads(Context ctx, string x, int heads, string? norm, string name, bool transposeOnly = false)
    {
        var g = ctx.G;
        var split = g.Op("Reshape", name + ".heads", x, g.Int64s("split_heads_" + heads, 0, 0, heads, ctx.C.HeadDim));
        if (norm is not null && !transposeOnly) split = RmsNorm(ctx, split, norm, name + ".norm");
        return g.Node("Transpose", name + ".t", [split], 1, "", Ints("perm", 0, 2, 1, 3))[0];
    }

    /// <summary>x·cos + rotate_half(x)·sin with cos/sin [B, 1, S, R] gathered at position_ids, on the leading
    /// R dimensions of each head (partial rotary: the rest pass unchanged).</summary>
    static string Rotate(Context ctx, string x, string name)
    {
        var (g, c) = (ctx.G, ctx.C);
        string rot = x, pass = "";
        if (c.Rotary < c.HeadDim)
        {
            var parts = g.Node("Split", name + ".partial", [x, g.Int64s("rotary_split", c.Rotary, c.HeadDim - c.Rotary)], 2, "", Int("axis", -1));
            (rot, pass) = (parts[0], parts[1]);
        }
        var halves = g.Node("Split", name + ".halves", [rot], 2, "", Int("axis", -1));   // opset 17: equal halves
        var rotated = g.Node("Concat", name + ".rotated", [g.Op("Neg", name + ".neg", halves[1]), halves[0]], 1, "", Int("axis", -1))[0];
        var y = g.Op("Add", name + ".sum", g.Op("Mul", name + ".cos", rot, ctx.Rotary.Cos), g.Op("Mul", name + ".sin", rotated, ctx.Rotary.Sin));
        return c.Rotary < c.HeadDim ? g.Node("Concat", name + ".whole", [y, pass], 1, "", Int("axis", -1))[0] : y;
    }

    /// <summary>[B, kv, T, d] → [B, heads, T, d], kv head j serving heads j·r .. j·r + r − 1 (repeat_interleave).</summary>
    static string RepeatKv(Context ctx, string x, string name)
    {
        var (g, c) = (ctx.G, ctx.C);
        if (c.KvGroups == 1) return x;
        var u = g.Node("Unsqueeze", name + ".unsqueeze", [x, g.Int64s("axis2", 2)])[0];
        var e = g.Op("Expand", name + ".expand", u, g.Int64s("kv_expand", 1, 1, c.KvGroups, 1, 1));
        return g.Op("Reshape", name + ".merge", e, g.Int64s("kv_merge", 0, c.NumHeads, -1, c.HeadDim));
    }

    /// <summary>cos and sin rows for position_ids, [B, 1, S, R] (the tables are initializers [positions, R]).
    /// LongRoPE: the long tables' rows once the total length passes the original context, as the engine
    /// switches (a cached key keeps the rotation it was computed with, in both).</summary>
    static (string, string) Rotary(OnnxGraphBuilder g, ModelConfig c, string total)
    {
        string cos = g.Node("Gather", "rotary.cos_at", [CosTable, "position_ids"])[0];
        string sin = g.Node("Gather", "rotary.sin_at", [SinTable, "position_ids"])[0];
        if (IsLongRope(c))
        {
            var beyond = g.Op("Greater", "rotary.beyond_original", total, g.Int64Scalar("original_context", c.RopeScaling!.OriginalMaxPositions));
            cos = g.Op("Where", "rotary.cos_pick", beyond, g.Node("Gather", "rotary.cos_long_at", [LongCosTable, "position_ids"])[0], cos);
            sin = g.Op("Where", "rotary.sin_pick", beyond, g.Node("Gather", "rotary.sin_long_at", [LongSinTable, "position_ids"])[0], sin);
        }
        var axis1 = g.Int64s("axis1", 1);
        return (g.Node("Unsqueeze", "rotary.cos_heads", [cos, axis1])[0], g.Node("Unsqueeze", "rotary.sin_heads", [sin, axis1])[0]);
    }

    /// <summary>Which keys each query may attend to, [B, 1, S, T] bool: key position ≤ query position (the
    /// queries are the last S of T positions), within the sliding window if the model has one, and not
    /// padding (attention_mask).</summary>
    static (string Allowed, string Total) Mask(OnnxGraphBuilder g, ModelConfig c)
    {
        var zero = g.Int64Scalar("zero_scalar", 0);
        var one = g.Int64Scalar("one_scalar", 1);
        var s = g.Node("Gather", "seq_len", [g.Op("Shape", "ids_shape_mask", "input_ids"), one], 1, "", Int("axis", 0))[0];
        var t = g.Node("Gather", "total_len", [g.Op("Shape", "mask_shape", "attention_mask"), one], 1, "", Int("axis", 0))[0];
        var past = g.Op("Sub", "past_len", t, s);
        var queries = g.Node("Unsqueeze", "query_pos", [g.Op("Range", "query_range", past, t, one), g.Int64s("axis1m", 1)])[0];   // [S, 1]
        var keys = g.Node("Unsqueeze", "key_pos", [g.Op("Range", "key_range", zero, t, one), g.Int64s("axis0", 0)])[0];          // [1, T]
        var allowed = g.Op("LessOrEqual", "causal", keys, queries);
        if (c.SlidingWindow is int w)
            allowed = g.Op("And", "windowed", allowed, g.Op("Greater", "in_window", keys, g.Op("Sub", "window_start", queries, g.Int64Scalar("window", w))));
        var padding = g.Node("Cast", "not_padding", ["attention_mask"], 1, "", Int("to", (long)TensorProto.Types.DataType.Bool))[0];
        var padding4 = g.Node("Unsqueeze", "not_padding_4d", [padding, g.Int64s("axes12", 1, 2)])[0];
        return (g.Op("And", "allowed", allowed, padding4), t);
    }
}
