using DotQuant.Tests;
using System.Text.Json.Nodes;

using DotQuant.Engine.Models;

namespace DotQuant.Tests;

/// <summary>One small synthetic checkpoint per family, exercising what sets the family apart (Qwen3's
/// q/k norms and decoupled head_dim, Phi-3's fused projections, partial rotary and LongRoPE, …), for the
/// tests that compare our forward with a naive one and with llama.cpp.</summary>
public static class SyntheticFamilies
{
    public static readonly string[] Names = ["qwen3", "phi3", "gemma2", "gemma3_text", "gpt2"];

    /// <summary>The preset of <paramref name="family"/> at width <paramref name="hidden"/> (4 heads, 2 KV heads).
    /// <paramref name="originalContext"/>: Phi-3's original_max_position_embeddings (LongRoPE uses its long
    /// factors beyond it).</summary>
    public static SyntheticModel.Spec Spec(string family, int hidden = 64, string? tokenizerText = null, int originalContext = 64) => family switch
    {
        "qwen3" => new()
        {
            ModelType = "qwen3", HiddenSize = hidden, Heads = 4, KvHeads = 2, HeadDim = hidden / 2, IntermediateSize = 2 * hidden,
            Layers = 2, VocabSize = 384, TieWordEmbeddings = true, RopeTheta = 1_000_000, TokenizerText = tokenizerText,
        },
        "phi3" => new()
        {
            ModelType = "phi3", HiddenSize = hidden, Heads = 4, KvHeads = 2, IntermediateSize = 2 * hidden, Layers = 2,
            VocabSize = 384, TieWordEmbeddings = false, MaxPositions = 4 * originalContext, TokenizerText = tokenizerText,
            ExtraConfig = new JsonObject
            {
                ["partial_rotary_factor"] = 0.75,
                ["original_max_position_embeddings"] = originalContext,
                ["rope_scaling"] = new JsonObject
                {
                    ["type"] = "longrope",
                    ["short_factor"] = Factors(hidden / 4 * 3 / 8, 0.1),
                    ["long_factor"] = Factors(hidden / 4 * 3 / 8, 0.7),
                },
            },
        },
        // Gemma: head_dim decoupled from hidden/heads, a short window so sliding layers differ from global ones.
        "gemma2" => new()
        {
            ModelType = "gemma2", HiddenSize = hidden, Heads = 4, KvHeads = 2, HeadDim = hidden / 2, IntermediateSize = 2 * hidden,
            Layers = 2, VocabSize = 384, TieWordEmbeddings = true, TokenizerText = tokenizerText,
            ExtraConfig = new JsonObject
            {
                ["query_pre_attn_scalar"] = hidden / 2, ["attn_logit_softcapping"] = 0.1, ["final_logit_softcapping"] = 0.5,
                ["sliding_window"] = 8,
            },
        },
        "gemma3_text" => new()
        {
            // Six layers: llama.cpp's gemma3 graph fixes the pattern (five sliding, one global) that transformers reads.
            ModelType = "gemma3_text", HiddenSize = hidden, Heads = 4, KvHeads = 2, HeadDim = hidden / 2, IntermediateSize = 2 * hidden,
            Layers = 6, VocabSize = 384, TieWordEmbeddings = true, RopeTheta = 1_000_000, TokenizerText = tokenizerText,
            ExtraConfig = new JsonObject
            {
                ["query_pre_attn_scalar"] = hidden / 2, ["sliding_window"] = 8, ["sliding_window_pattern"] = 6,
                ["rope_local_base_freq"] = 10000.0,
                ["rope_scaling"] = new JsonObject { ["rope_type"] = "linear", ["factor"] = 4.0 },
            },
        },
        "gpt2" => new()
        {
            ModelType = "gpt2", HiddenSize = hidden, Heads = 4, KvHeads = 4, IntermediateSize = 4 * hidden, Layers = 2,
            VocabSize = 384, TieWordEmbeddings = true, MaxPositions = 256, TokenizerText = tokenizerText,
        },
        _ => throw new ArgumentOutOfRangeException(nameof(family), family, "no synthetic preset"),
    };

    static JsonArray Factors(int count, double step) =>
        new(Enumerable.Range(0, count).Select(i => (JsonNode)(1.0 + step * i)).ToArray());
}
