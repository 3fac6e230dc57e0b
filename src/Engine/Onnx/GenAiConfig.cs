using System.Text.Json.Nodes;
using DotQuant.Engine.IO;

namespace DotQuant.Engine.Onnx;

/// <summary>genai_config.json: what ONNX Runtime GenAI needs to drive the decoder graph (the model type,
/// its sizes, the special tokens) and greedy search as the default (num_beams 1, no sampling), so the
/// output of an app that sets nothing is the model's most likely continuation. Input and output names
/// are GenAI's defaults (input_ids, attention_mask, position_ids, past_key_values.%d.key, logits,
/// present.%d.key, ...), which <see cref="DecoderOnnxGraph"/> uses.</summary>
internal static class GenAiConfig
{
    public static JsonObject For(ModelConfig c)
    {
        int eos = c.EosTokenIds.Length > 0 ? c.EosTokenIds[0] : 0;
        JsonNode eosNode = c.EosTokenIds.Length > 1 ? new JsonArray(c.EosTokenIds.Select(e => (JsonNode)e).ToArray()) : eos;
        return new JsonObject
        {
            ["model"] = new JsonObject
            {
                // GenAI's "gpt2" type is its legacy graph with combined past_%d [2, batch, heads, past, d]
                // caches; our GPT-2 graph has the separate key/value caches of its generic "decoder" type.
                ["type"] = c.ModelType == "gpt2" ? "decoder" : c.ModelType,
                ["bos_token_id"] = c.BosTokenId ?? eos,
                ["eos_token_id"] = eosNode,
                ["pad_token_id"] = eos,
                ["context_length"] = c.MaxPositionEmbeddings,
                ["vocab_size"] = c.VocabSize,
                ["decoder"] = new JsonObject
                {
                    ["filename"] = Formats.OnnxPackageWriter.ModelFile,
                    ["session_options"] = new JsonObject { ["log_id"] = "onnxruntime-genai", ["provider_options"] = new JsonArray() },
                    ["head_size"] = c.HeadDim,
                    ["hidden_size"] = c.HiddenSize,
                    ["num_attention_heads"] = c.NumHeads,
                    ["num_key_value_heads"] = c.NumKvHeads,
                    ["num_hidden_layers"] = c.NumLayers,
                },
            },
            ["search"] = new JsonObject
            {
                ["do_sample"] = false,
                ["num_beams"] = 1,
                ["num_return_sequences"] = 1,
                ["max_length"] = c.MaxPositionEmbeddings,
                ["min_length"] = 0,
                ["past_present_share_buffer"] = false,
                ["repetition_penalty"] = 1.0,
                ["temperature"] = 1.0,
                ["top_k"] = 1,
                ["top_p"] = 1.0,
            },
        };
    }
}
