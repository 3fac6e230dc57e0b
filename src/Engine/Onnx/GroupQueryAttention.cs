using DotQuant.Engine.IO;
using Onnx;
using static DotQuant.Engine.Onnx.OnnxGraphBuilder;

namespace DotQuant.Engine.Onnx;

/// <summary>ORT's fused <c>com.microsoft.GroupQueryAttention</c>: rotary (rotate_half layout, cos/sin caches
/// [positions, d/2], the first half of the engine's tables), the cache, grouped heads, causal softmax and a
/// sliding window in one kernel, as ORT GenAI's model builder emits it. seqlens_k = Σ attention_mask − 1 and
/// total_sequence_length = attention_mask's width (int32). Qwen3's q/k norms run before it, per head.</summary>
internal sealed class GroupQueryAttention : OnnxAttention
{
    readonly ModelConfig _c;
    readonly string _seqlens, _total, _cosCache, _sinCache;

    public GroupQueryAttention(OnnxGraphBuilder g, ModelConfig c)
    {
        _c = c;
        var sum = g.Node("ReduceSum", "gqa.mask_sum", ["attention_mask", g.Int64s("axes_1", 1)], 1, "", Int("keepdims", 0))[0];
        _seqlens = g.Node("Cast", "gqa.seqlens_k", [g.Op("Sub", "gqa.mask_sum_minus_1", sum, g.Int64s("one_1d", 1))], 1, "", Int("to", (long)TensorProto.Types.DataType.Int32))[0];
        var width = g.Node("Gather", "gqa.total_len", [g.Op("Shape", "gqa.mask_shape", "attention_mask"), g.Int64Scalar("one_scalar", 1)], 1, "", Int("axis", 0))[0];
        _total = g.Node("Cast", "gqa.total_sequence_length", [width], 1, "", Int("to", (long)TensorProto.Types.DataType.Int32))[0];
        var half = g.Int64s("half_rotary", c.Rotary / 2);
        _cosCache = g.Op("Slice", "gqa.cos_cache", CosTable, g.Int64s("zero_1d", 0), half, g.Int64s("axes_1", 1));
        _sinCache = g.Op("Slice", "gqa.sin_cache", SinTable, g.Int64s("zero_1d", 0), half, g.Int64s("axes_1", 1));
    }

    public override string Attend(OnnxGraphBuilder g, int i, string q, string k, string v, string? qNorm, string? kNorm)
    {
        var c = _c;
        if (qNorm is not null) q = NormPerHead(g, q, c.NumHeads, qNorm, $"l{i}.q_norm");
        if (kNorm is not null) k = NormPerHead(g, k, c.NumKvHeads, kNorm, $"l{i}.k_norm");
        var outputs = g.NodeOutputs("GroupQueryAttention", $"l{i}.gqa",
            [q, k, v, PastKey(i), PastValue(i), _seqlens, _total, _cosCache, _sinCache],
            [$"l{i}.gqa/out", PresentKey(i), PresentValue(i)], MicrosoftDomain,
            Int("num_heads", c.NumHeads), Int("kv_num_heads", c.NumKvHeads), Float("scale", (float)(1.0 / Math.Sqrt(c.HeadDim))),
            Int("do_rotary", 1), Int("rotary_interleaved", 0), Int("local_window_size", c.SlidingWindow is int w ? w : -1));
        return outputs[0];
    }

    string NormPerHead(OnnxGraphBuilder g, string x, int heads, string weight, string name)
    {
        var split = g.Op("Reshape", name + ".heads", x, g.Int64s("split_heads_" + heads, 0, 0, heads, _c.HeadDim));
        var normed = OnnxFamily.RmsNorm(g, _c, split, weight, name);
        return g.Op("Reshape", name + ".merge", normed, g.Int64s("merge_heads_" + heads, 0, 0, (long)heads * _c.HeadDim));
    }
}
