using DotQuant.Engine.IO;
using Onnx;
using static DotQuant.Engine.Onnx.OnnxGraphBuilder;

namespace DotQuant.Engine.Onnx;

/// <summary>What varies in attention between families: the score scale, Gemma's soft cap, which layers
/// slide (and over how many positions), whether sliding layers rotate with their own tables (Gemma 3's
/// local base), and the per-head q/k norm.</summary>
internal sealed record AttentionSettings(float Scale, double? Softcap, int? Window, Func<int, bool> Sliding, bool LocalRope,
    Func<OnnxGraphBuilder, string, string, string, string> QkNorm, bool Rotary = true)
{
    /// <summary>GPT-2: 1/√d, learned positions instead of rotary, causal only.</summary>
    public static AttentionSettings Unrotated(ModelConfig c) => new((float)(1.0 / Math.Sqrt(c.HeadDim)), null, null, _ => false, false,
        (g, x, w, name) => throw new InvalidOperationException("no q/k norm"), Rotary: false);

    /// <summary>Llama-family attention: 1/√d, no cap, every layer windowed if the config has a window.</summary>
    public static AttentionSettings Llama(ModelConfig c) => new((float)(1.0 / Math.Sqrt(c.HeadDim)), null, c.SlidingWindow, _ => c.SlidingWindow is not null, false,
        (g, x, w, name) => OnnxFamily.RmsNorm(g, c, x, w, name));
}

/// <summary>Attention from standard ops, the engine's computation step by step: heads split and
/// transposed, rotary x·cos + rotate_half(x)·sin on the leading R dimensions with rows gathered at
/// position_ids (LongRoPE: the long tables once the total length passes the original context), the cache
/// concatenated, KV heads repeated, scores scaled (and soft-capped), masked to the keys a query may see
/// (causal, sliding window, not padding), softmax, heads merged.</summary>
internal sealed class StandardAttention : OnnxAttention
{
    public const string LocalCosTable = "rotary.cos_local";
    public const string LocalSinTable = "rotary.sin_local";

    readonly ModelConfig _c;
    readonly AttentionSettings _s;
    readonly string _causal, _total;
    readonly (string Cos, string Sin)? _global;
    string? _windowed;
    (string Cos, string Sin)? _local;

    public StandardAttention(OnnxGraphBuilder g, ModelConfig c, AttentionSettings settings)
    {
        _c = c;
        _s = settings;
        (_causal, _total) = Causal(g);
        _global = settings.Rotary ? Rotary(g, c, _total) : null;
    }

    public override string Attend(OnnxGraphBuilder g, int i, string q, string k, string v, string? qNorm, string? kNorm)
    {
        var c = _c;
        bool sliding = _s.Sliding(i);
        var allowed = sliding && _s.Window is int w ? _windowed ??= Windowed(g, w) : _causal;
        q = Heads(g, q, c.NumHeads, qNorm, $"l{i}.q");
        k = Heads(g, k, c.NumKvHeads, kNorm, $"l{i}.k");
        if (_global is { } global)
        {
            var (cos, sin) = sliding && _s.LocalRope ? _local ??= LocalRotary(g) : global;
            q = Rotate(g, q, cos, sin, $"l{i}.q_rope");
            k = Rotate(g, k, cos, sin, $"l{i}.k_rope");
        }
        v = Heads(g, v, c.NumKvHeads, null, $"l{i}.v");
        g.NodeTo("Concat", PresentKey(i), [PastKey(i), k], "", Int("axis", 2));
        g.NodeTo("Concat", PresentValue(i), [PastValue(i), v], "", Int("axis", 2));
        var ke = RepeatKv(g, PresentKey(i), $"l{i}.k_repeat");
        var ve = RepeatKv(g, PresentValue(i), $"l{i}.v_repeat");

        var kt = g.Node("Transpose", $"l{i}.k_t", [ke], 1, "", Ints("perm", 0, 1, 3, 2))[0];
        var scores = g.Op("Mul", $"l{i}.scaled", g.Op("MatMul", $"l{i}.qk", q, kt), g.FloatScalar("attn_scale", _s.Scale));
        if (_s.Softcap is double cap) scores = SoftCap(g, scores, cap, $"l{i}.softcap");
        var masked = g.Op("Where", $"l{i}.masked", allowed, scores, g.FloatScalar("mask_min", float.MinValue));
        var probs = g.Node("Softmax", $"l{i}.softmax", [masked], 1, "", Int("axis", -1))[0];
        var attn = g.Op("MatMul", $"l{i}.attn", probs, ve);
        attn = g.Node("Transpose", $"l{i}.attn_t", [attn], 1, "", Ints("perm", 0, 2, 1, 3))[0];
        return g.Op("Reshape", $"l{i}.attn_merge", attn, g.Int64s("merge_heads", 0, 0, (long)c.NumHeads * c.HeadDim));
    }

    /// <summary>tanh(x / cap)·cap.</summary>
    public static string SoftCap(OnnxGraphBuilder g, string x, double cap, string name) =>
        g.Op("Mul", name + ".scale", g.Op("Tanh", name + ".tanh", g.Op("Div", name + ".div", x, g.FloatScalar("softcap_" + name, (float)cap))), g.FloatScalar("softcap_" + name, (float)cap));

    /// <summary>[B, S, heads·d] → [B, heads, S, d], with the per-head q/k norm before the transpose.</summary>
    string Heads(OnnxGraphBuilder g, string x, int heads, string? norm, string name)
    {
        var split = g.Op("Reshape", name + ".heads", x, g.Int64s("split_heads_" + heads, 0, 0, heads, _c.HeadDim));
        if (norm is not null) split = _s.QkNorm(g, split, norm, name + ".norm");
        return g.Node("Transpose", name + ".t", [split], 1, "", Ints("perm", 0, 2, 1, 3))[0];
    }

    /// <summary>x·cos + rotate_half(x)·sin with cos/sin [B, 1, S, R], on the leading R dimensions of each
    /// head (partial rotary: the rest pass unchanged).</summary>
    string Rotate(OnnxGraphBuilder g, string x, string cos, string sin, string name)
    {
        var c = _c;
        string rot = x, pass = "";
        if (c.Rotary < c.HeadDim)
        {
            var parts = g.Node("Split", name + ".partial", [x, g.Int64s("rotary_split", c.Rotary, c.HeadDim - c.Rotary)], 2, "", Int("axis", -1));
            (rot, pass) = (parts[0], parts[1]);
        }
        var halves = g.Node("Split", name + ".halves", [rot], 2, "", Int("axis", -1));   // opset 17: equal halves
        var rotated = g.Node("Concat", name + ".rotated", [g.Op("Neg", name + ".neg", halves[1]), halves[0]], 1, "", Int("axis", -1))[0];
        var y = g.Op("Add", name + ".sum", g.Op("Mul", name + ".cos", rot, cos), g.Op("Mul", name + ".sin", rotated, sin));
        return c.Rotary < c.HeadDim ? g.Node("Concat", name + ".whole", [y, pass], 1, "", Int("axis", -1))[0] : y;
    }

    /// <summary>[B, kv, T, d] → [B, heads, T, d], kv head j serving heads j·r .. j·r + r − 1 (repeat_interleave).</summary>
    string RepeatKv(OnnxGraphBuilder g, string x, string name)
    {
        var c = _c;
        if (c.KvGroups == 1) return x;
        var u = g.Node("Unsqueeze", name + ".unsqueeze", [x, g.Int64s("axis2", 2)])[0];
        var e = g.Op("Expand", name + ".expand", u, g.Int64s("kv_expand", 1, 1, c.KvGroups, 1, 1));
        return g.Op("Reshape", name + ".merge", e, g.Int64s("kv_merge", 0, c.NumHeads, -1, c.HeadDim));
    }

    /// <summary>cos and sin rows for position_ids, [B, 1, S, R]. LongRoPE: the long tables' rows once the
    /// total length passes the original context, as the engine switches (a cached key keeps the rotation
    /// it was computed with, in both).</summary>
    static (string, string) Rotary(OnnxGraphBuilder g, ModelConfig c, string total)
    {
        string cos = Rows(g, CosTable, "rotary.cos_at"), sin = Rows(g, SinTable, "rotary.sin_at");
        if (IsLongRope(c))
        {
            var beyond = g.Op("Greater", "rotary.beyond_original", total, g.Int64Scalar("original_context", c.RopeScaling!.OriginalMaxPositions));
            cos = g.Op("Where", "rotary.cos_pick", beyond, Rows(g, LongCosTable, "rotary.cos_long_at"), cos);
            sin = g.Op("Where", "rotary.sin_pick", beyond, Rows(g, LongSinTable, "rotary.sin_long_at"), sin);
        }
        return (Heads(g, cos, "rotary.cos_heads"), Heads(g, sin, "rotary.sin_heads"));
    }

    static (string, string) LocalRotary(OnnxGraphBuilder g) =>
        (Heads(g, Rows(g, LocalCosTable, "rotary.local_cos_at"), "rotary.local_cos_heads"), Heads(g, Rows(g, LocalSinTable, "rotary.local_sin_at"), "rotary.local_sin_heads"));

    static string Rows(OnnxGraphBuilder g, string table, string name) => g.Node("Gather", name, [table, "position_ids"])[0];

    static string Heads(OnnxGraphBuilder g, string rows, string name) => g.Node("Unsqueeze", name, [rows, g.Int64s("axis1", 1)])[0];

    string _queries = "", _keys = "", _padding = "";

    /// <summary>[B, 1, S, T] bool: key position ≤ query position (the queries are the last S of T
    /// positions) and not padding (attention_mask).</summary>
    (string Allowed, string Total) Causal(OnnxGraphBuilder g)
    {
        var zero = g.Int64Scalar("zero_scalar", 0);
        var one = g.Int64Scalar("one_scalar", 1);
        var s = g.Node("Gather", "seq_len", [g.Op("Shape", "ids_shape_mask", "input_ids"), one], 1, "", Int("axis", 0))[0];
        var t = g.Node("Gather", "total_len", [g.Op("Shape", "mask_shape", "attention_mask"), one], 1, "", Int("axis", 0))[0];
        var past = g.Op("Sub", "past_len", t, s);
        _queries = g.Node("Unsqueeze", "query_pos", [g.Op("Range", "query_range", past, t, one), g.Int64s("axis1m", 1)])[0];   // [S, 1]
        _keys = g.Node("Unsqueeze", "key_pos", [g.Op("Range", "key_range", zero, t, one), g.Int64s("axis0", 0)])[0];          // [1, T]
        var padding = g.Node("Cast", "not_padding", ["attention_mask"], 1, "", Int("to", (long)TensorProto.Types.DataType.Bool))[0];
        _padding = g.Node("Unsqueeze", "not_padding_4d", [padding, g.Int64s("axes12", 1, 2)])[0];
        return (g.Op("And", "allowed", g.Op("LessOrEqual", "causal", _keys, _queries), _padding), t);
    }

    /// <summary>The causal mask within the last <paramref name="window"/> positions (the query's own included).</summary>
    string Windowed(OnnxGraphBuilder g, int window)
    {
        var inWindow = g.Op("Greater", "in_window", _keys, g.Op("Sub", "window_start", _queries, g.Int64Scalar("window", window)));
        return g.Op("And", "allowed_windowed", _causal, inWindow);
    }
}
