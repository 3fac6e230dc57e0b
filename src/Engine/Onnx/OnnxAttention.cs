using DotQuant.Engine.IO;

namespace DotQuant.Engine.Onnx;

/// <summary>Rotary self-attention with a KV cache in the decoder graph: from q, k, v projections
/// [B, S, heads·d] to the attention output [B, S, heads·d], reading past_key_values.{i}.key/value and
/// writing present.{i}.key/value [B, kv heads, total, d]. Two forms compute the same function:
/// ORT's fused GroupQueryAttention where its CPU kernel applies, standard ops everywhere else.</summary>
internal abstract class OnnxAttention
{
    /// <summary>Rotary tables [positions, R] (the engine's cat(freqs, freqs) layout), written by the package writer.</summary>
    public const string CosTable = "rotary.cos";
    public const string SinTable = "rotary.sin";
    /// <summary>LongRoPE's tables with the long factors (used once the total length passes the original context).</summary>
    public const string LongCosTable = "rotary.cos_long";
    public const string LongSinTable = "rotary.sin_long";

    public static bool IsLongRope(ModelConfig c) => c.RopeScaling is { Type: "longrope" };

    /// <summary>GroupQueryAttention for head sizes its CPU kernel takes (a multiple of 16) with whole-head
    /// rotary from one table; standard ops otherwise (partial rotary, LongRoPE's switch, small heads).</summary>
    public static OnnxAttention For(OnnxGraphBuilder g, ModelConfig c) =>
        c.HeadDim % 16 == 0 && c.Rotary == c.HeadDim && !IsLongRope(c) ? new GroupQueryAttention(g, c) : new StandardAttention(g, c, AttentionSettings.Llama(c));

    /// <param name="qNorm">Qwen3's per-head RMSNorm weights of q and k (applied before the rotation), or null.</param>
    public abstract string Attend(OnnxGraphBuilder g, int layer, string q, string k, string v, string? qNorm, string? kNorm);

    public static string PastKey(int layer) => $"past_key_values.{layer}.key";
    public static string PastValue(int layer) => $"past_key_values.{layer}.value";
    public static string PresentKey(int layer) => $"present.{layer}.key";
    public static string PresentValue(int layer) => $"present.{layer}.value";
}
