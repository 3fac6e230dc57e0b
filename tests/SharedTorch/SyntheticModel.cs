using DotQuant.Tests;
using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using DotQuant.Engine.IO;
using DotQuant.Engine.Tokenization;
using static TorchSharp.torch;

using DotQuant.Engine.Models;
using DotQuant.Engine.Torch;

namespace DotQuant.Tests;

/// <summary>Writes a complete Hugging Face model folder with random weights: config.json,
/// model.safetensors (or shards) in the requested dtype, and a byte-level BPE tokenizer.json
/// trained on a sample text (Qwen2-style pre-tokenization). Used by tests for families without a
/// shared pretrained model and by the benchmark for realistic shapes.</summary>
public static class SyntheticModel
{
    public sealed record Spec
    {
        public string ModelType { get; init; } = "llama";
        public int HiddenSize { get; init; } = 64;
        public int IntermediateSize { get; init; } = 160;
        public int Layers { get; init; } = 2;
        public int Heads { get; init; } = 4;
        public int KvHeads { get; init; } = 2;
        /// <summary>head_dim written to config.json when set (Qwen3 and Gemma decouple it from hidden/heads).</summary>
        public int? HeadDim { get; init; }
        public int VocabSize { get; init; } = 384;
        public int MaxPositions { get; init; } = 256;
        public bool TieWordEmbeddings { get; init; } = true;
        public double RopeTheta { get; init; } = 10000;
        public JsonObject? RopeScaling { get; init; }
        public ScalarType DType { get; init; } = ScalarType.Float32;
        public long Seed { get; init; } = 1234;
        /// <summary>Split the weights into this many shards with an index (1 = single file).</summary>
        public int Shards { get; init; } = 1;
        /// <summary>Write tensor by tensor into shards of at most this many bytes (a model larger than
        /// memory: only one tensor is ever held). Overrides <see cref="Shards"/>.</summary>
        public long? ShardBytes { get; init; }
        public string? TokenizerText { get; init; }
        /// <summary>Further config.json keys (a family's own: partial_rotary_factor, soft-capping, …).</summary>
        public JsonObject? ExtraConfig { get; init; }
    }

    public static void Write(string dir, Spec spec)
    {
        Directory.CreateDirectory(dir);
        WriteConfig(dir, spec);
        WriteWeights(dir, spec);
        if (spec.TokenizerText is not null)
            WriteByteLevelTokenizer(dir, spec.TokenizerText, spec.VocabSize);
    }

    static void WriteConfig(string dir, Spec s)
    {
        if (s.ModelType == "gpt2")
        {
            var gpt2 = new JsonObject
            {
                ["architectures"] = new JsonArray("GPT2LMHeadModel"), ["model_type"] = "gpt2",
                ["n_embd"] = s.HiddenSize, ["n_layer"] = s.Layers, ["n_head"] = s.Heads, ["n_positions"] = s.MaxPositions,
                ["n_inner"] = s.IntermediateSize, ["vocab_size"] = s.VocabSize, ["layer_norm_epsilon"] = 1e-5,
                ["activation_function"] = "gelu_new", ["bos_token_id"] = 0, ["eos_token_id"] = 0, ["torch_dtype"] = "float32",
            };
            foreach (var (key, value) in s.ExtraConfig ?? []) gpt2[key] = value?.DeepClone();
            File.WriteAllText(Path.Combine(dir, "config.json"), gpt2.ToJsonString(new() { WriteIndented = true }));
            return;
        }
        var config = new JsonObject
        {
            ["architectures"] = new JsonArray(s.ModelType switch { "qwen2" => "Qwen2ForCausalLM", "qwen3" => "Qwen3ForCausalLM", "mistral" => "MistralForCausalLM", "phi3" => "Phi3ForCausalLM", "gemma2" => "Gemma2ForCausalLM", "gemma3_text" => "Gemma3ForCausalLM", _ => "LlamaForCausalLM" }),
            ["model_type"] = s.ModelType,
            ["hidden_size"] = s.HiddenSize,
            ["intermediate_size"] = s.IntermediateSize,
            ["num_hidden_layers"] = s.Layers,
            ["num_attention_heads"] = s.Heads,
            ["num_key_value_heads"] = s.KvHeads,
            ["vocab_size"] = s.VocabSize,
            ["max_position_embeddings"] = s.MaxPositions,
            ["rms_norm_eps"] = 1e-6,
            ["rope_theta"] = s.RopeTheta,
            ["hidden_act"] = s.ModelType.StartsWith("gemma", StringComparison.Ordinal) ? "gelu_pytorch_tanh" : "silu",
            ["tie_word_embeddings"] = s.TieWordEmbeddings,
            ["torch_dtype"] = s.DType switch { ScalarType.BFloat16 => "bfloat16", ScalarType.Float16 => "float16", _ => "float32" },
            ["bos_token_id"] = 0,
            ["eos_token_id"] = 0,
        };
        if (s.RopeScaling is not null) config["rope_scaling"] = s.RopeScaling.DeepClone();
        if (s.HeadDim is int hd) config["head_dim"] = hd;
        foreach (var (key, value) in s.ExtraConfig ?? []) config[key] = value?.DeepClone();
        File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString(new() { WriteIndented = true }));
    }

    static void WriteWeights(string dir, Spec s)
    {
        if (s.ShardBytes is long shardBytes)
        {
            WriteStreaming(dir, s, shardBytes);
            return;
        }
        using var scope = NewDisposeScope();
        var g = new TorchSharp.torch.Generator((ulong)s.Seed);
        if (s.ModelType == "gpt2")
        {
            SafeTensorsWriter.Write(Path.Combine(dir, "model.safetensors"), Gpt2Tensors(s, g));
            return;
        }
        int headDim = s.HeadDim ?? s.HiddenSize / s.Heads;
        long q = (long)s.Heads * headDim, kv = (long)s.KvHeads * headDim;
        bool qkvBias = s.ModelType == "qwen2";
        var tensors = new SortedDictionary<string, Tensor>(StringComparer.Ordinal);
        // Intermediates are freed at once: a 1 GB bf16 model must not need 5 GB of fp32 scratch.
        Tensor Rand(params long[] shape)
        {
            using var r = randn(shape, generator: g);
            r.mul_(Scalars.Of(0.02f));
            return r.to(s.DType);
        }
        Tensor Norm(long n)
        {
            using var r = randn(n, generator: g);
            r.mul_(Scalars.Of(0.05f)).add_(Scalars.Of(1L), Scalars.Of(1L));
            return r.to(s.DType);
        }

        tensors["model.embed_tokens.weight"] = Rand(s.VocabSize, s.HiddenSize);
        for (int i = 0; i < s.Layers; i++)
        {
            string p = $"model.layers.{i}.";
            tensors[p + "self_attn.q_proj.weight"] = Rand(q, s.HiddenSize);
            tensors[p + "self_attn.k_proj.weight"] = Rand(kv, s.HiddenSize);
            tensors[p + "self_attn.v_proj.weight"] = Rand(kv, s.HiddenSize);
            if (qkvBias)
            {
                // Biases larger than the weights so that a forward ignoring them is visibly wrong.
                tensors[p + "self_attn.q_proj.bias"] = Rand(q).mul_(Scalars.Of(10L));
                tensors[p + "self_attn.k_proj.bias"] = Rand(kv).mul_(Scalars.Of(10L));
                tensors[p + "self_attn.v_proj.bias"] = Rand(kv).mul_(Scalars.Of(10L));
            }
            tensors[p + "self_attn.o_proj.weight"] = Rand(s.HiddenSize, q);
            tensors[p + "mlp.gate_proj.weight"] = Rand(s.IntermediateSize, s.HiddenSize);
            tensors[p + "mlp.up_proj.weight"] = Rand(s.IntermediateSize, s.HiddenSize);
            tensors[p + "mlp.down_proj.weight"] = Rand(s.HiddenSize, s.IntermediateSize);
            tensors[p + "input_layernorm.weight"] = Norm(s.HiddenSize);
            tensors[p + "post_attention_layernorm.weight"] = Norm(s.HiddenSize);
            if (s.ModelType is "gemma2" or "gemma3_text")
            {
                tensors[p + "pre_feedforward_layernorm.weight"] = Norm(s.HiddenSize);
                tensors[p + "post_feedforward_layernorm.weight"] = Norm(s.HiddenSize);
            }
            if (s.ModelType is "qwen3" or "gemma3_text")
            {
                tensors[p + "self_attn.q_norm.weight"] = Norm(headDim);
                tensors[p + "self_attn.k_norm.weight"] = Norm(headDim);
            }
        }
        tensors["model.norm.weight"] = Norm(s.HiddenSize);
        if (!s.TieWordEmbeddings) tensors["lm_head.weight"] = Rand(s.VocabSize, s.HiddenSize);
        if (s.ModelType == "phi3") Fuse(tensors, s.Layers);

        if (s.Shards <= 1)
        {
            SafeTensorsWriter.Write(Path.Combine(dir, "model.safetensors"), tensors);
            return;
        }
        var names = tensors.Keys.ToList();
        var weightMap = new JsonObject();
        for (int k = 0; k < s.Shards; k++)
        {
            string file = $"model-{k + 1:D5}-of-{s.Shards:D5}.safetensors";
            var part = names.Where((_, i) => i % s.Shards == k).ToDictionary(n => n, n => tensors[n]);
            SafeTensorsWriter.Write(Path.Combine(dir, file), part);
            foreach (var n in part.Keys) weightMap[n] = file;
        }
        var index = new JsonObject { ["metadata"] = new JsonObject(), ["weight_map"] = weightMap };
        File.WriteAllText(Path.Combine(dir, "model.safetensors.index.json"), index.ToJsonString(new() { WriteIndented = true }));
    }

    /// <summary>GPT-2 as transformers saves GPT2LMHeadModel: Conv1D weights [in, out], biases everywhere,
    /// learned positions, LayerNorms with bias, the head tied to wte (not stored).</summary>
    static SortedDictionary<string, Tensor> Gpt2Tensors(Spec s, TorchSharp.torch.Generator g)
    {
        long h = s.HiddenSize, f = s.IntermediateSize;
        var t = new SortedDictionary<string, Tensor>(StringComparer.Ordinal);
        Tensor Rand(float scale, params long[] shape) => randn(shape, generator: g).mul_(Scalars.Of(scale)).to(s.DType);
        t["transformer.wte.weight"] = Rand(0.02f, s.VocabSize, h);
        t["transformer.wpe.weight"] = Rand(0.01f, s.MaxPositions, h);
        for (int i = 0; i < s.Layers; i++)
        {
            string p = $"transformer.h.{i}.";
            t[p + "ln_1.weight"] = Rand(0.05f, h).add_(Scalars.Of(1L), Scalars.Of(1L));
            t[p + "ln_1.bias"] = Rand(0.05f, h);
            t[p + "attn.c_attn.weight"] = Rand(0.02f, h, 3 * h);
            t[p + "attn.c_attn.bias"] = Rand(0.05f, 3 * h);
            t[p + "attn.c_proj.weight"] = Rand(0.02f, h, h);
            t[p + "attn.c_proj.bias"] = Rand(0.05f, h);
            t[p + "ln_2.weight"] = Rand(0.05f, h).add_(Scalars.Of(1L), Scalars.Of(1L));
            t[p + "ln_2.bias"] = Rand(0.05f, h);
            t[p + "mlp.c_fc.weight"] = Rand(0.02f, h, f);
            t[p + "mlp.c_fc.bias"] = Rand(0.05f, f);
            t[p + "mlp.c_proj.weight"] = Rand(0.02f, f, h);
            t[p + "mlp.c_proj.bias"] = Rand(0.05f, h);
        }
        t["transformer.ln_f.weight"] = Rand(0.05f, h).add_(Scalars.Of(1L), Scalars.Of(1L));
        t["transformer.ln_f.bias"] = Rand(0.05f, h);
        return t;
    }

    /// <summary>Phi-3's layout: q, k, v rows stacked into qkv_proj, gate and up into gate_up_proj.</summary>
    static void Fuse(SortedDictionary<string, Tensor> tensors, int layers)
    {
        void Stack(string into, params string[] parts)
        {
            tensors[into] = cat(parts.Select(p => tensors[p]).ToArray(), 0);
            foreach (var p in parts) tensors.Remove(p);
        }
        for (int i = 0; i < layers; i++)
        {
            string p = $"model.layers.{i}.";
            Stack(p + "self_attn.qkv_proj.weight", p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight");
            Stack(p + "mlp.gate_up_proj.weight", p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight");
        }
    }

    /// <summary>The same tensors (same generator draws, same order) written one at a time (Llama layouts).</summary>
    static void WriteStreaming(string dir, Spec s, long shardBytes)
    {
        if (s.ModelType is not ("llama" or "qwen2" or "qwen3" or "mistral"))
            throw new NotSupportedException($"streaming synthetic checkpoints are written for the Llama layout, not {s.ModelType}");
        var g = new TorchSharp.torch.Generator((ulong)s.Seed);
        int headDim = s.HeadDim ?? s.HiddenSize / s.Heads;
        long q = (long)s.Heads * headDim, kv = (long)s.KvHeads * headDim;
        bool qkvBias = s.ModelType == "qwen2";
        string scratch = Path.Combine(dir, ".synthetic-shards");
        using var writer = new ShardedSafeTensorsWriter(scratch, shardBytes);
        void Rand(string name, float scale, params long[] shape)
        {
            using var scope = NewDisposeScope();
            var r = randn(shape, generator: g).mul_(Scalars.Of(0.02f * scale));
            writer.Add(name, r.to(s.DType));
        }
        void Norm(string name, long n)
        {
            using var scope = NewDisposeScope();
            writer.Add(name, randn(n, generator: g).mul_(Scalars.Of(0.05f)).add_(Scalars.Of(1L), Scalars.Of(1L)).to(s.DType));
        }
        Rand("model.embed_tokens.weight", 1, s.VocabSize, s.HiddenSize);
        for (int i = 0; i < s.Layers; i++)
        {
            string p = $"model.layers.{i}.";
            Rand(p + "self_attn.q_proj.weight", 1, q, s.HiddenSize);
            Rand(p + "self_attn.k_proj.weight", 1, kv, s.HiddenSize);
            Rand(p + "self_attn.v_proj.weight", 1, kv, s.HiddenSize);
            if (qkvBias)
            {
                Rand(p + "self_attn.q_proj.bias", 10, q);
                Rand(p + "self_attn.k_proj.bias", 10, kv);
                Rand(p + "self_attn.v_proj.bias", 10, kv);
            }
            Rand(p + "self_attn.o_proj.weight", 1, s.HiddenSize, q);
            Rand(p + "mlp.gate_proj.weight", 1, s.IntermediateSize, s.HiddenSize);
            Rand(p + "mlp.up_proj.weight", 1, s.IntermediateSize, s.HiddenSize);
            Rand(p + "mlp.down_proj.weight", 1, s.HiddenSize, s.IntermediateSize);
            Norm(p + "input_layernorm.weight", s.HiddenSize);
            Norm(p + "post_attention_layernorm.weight", s.HiddenSize);
            if (s.ModelType == "qwen3")
            {
                Norm(p + "self_attn.q_norm.weight", headDim);
                Norm(p + "self_attn.k_norm.weight", headDim);
            }
        }
        Norm("model.norm.weight", s.HiddenSize);
        if (!s.TieWordEmbeddings) Rand("lm_head.weight", 1, s.VocabSize, s.HiddenSize);
        writer.Finish(dir);
        Directory.Delete(scratch, true);
    }

    /// <summary>Qwen2's pre-tokenizer pattern.</summary>
    public const string Qwen2Pattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// <summary>Trains a byte-level BPE (most frequent pair first, ties by ordinal order, so the
    /// result is deterministic) and writes a Qwen2-style tokenizer.json with one special token.</summary>
    public static void WriteByteLevelTokenizer(string dir, string text, int vocabSize)
    {
        const string special = "<|endoftext|>";
        var regex = new Regex(Qwen2Pattern);
        var words = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (Match m in regex.Matches(text))
        {
            string w = ByteLevelAlphabet.Encode(Encoding.UTF8.GetBytes(m.Value));
            words[w] = words.GetValueOrDefault(w) + 1;
        }
        var vocab = new List<string>();
        vocab.Add(special);
        foreach (char c in ByteLevelAlphabet.ByteToChar) vocab.Add(c.ToString());
        var split = words.ToDictionary(kv => kv.Key, kv => kv.Key.Select(c => c.ToString()).ToList(), StringComparer.Ordinal);
        var merges = new List<(string, string)>();
        var known = vocab.ToHashSet(StringComparer.Ordinal);
        while (vocab.Count < vocabSize)
        {
            var counts = new Dictionary<(string, string), int>();
            foreach (var (w, syms) in split)
                for (int i = 0; i + 1 < syms.Count; i++)
                {
                    var pair = (syms[i], syms[i + 1]);
                    counts[pair] = counts.GetValueOrDefault(pair) + words[w];
                }
            if (counts.Count == 0) break;
            var best = counts.OrderByDescending(kv => kv.Value)
                .ThenBy(kv => kv.Key.Item1, StringComparer.Ordinal).ThenBy(kv => kv.Key.Item2, StringComparer.Ordinal).First().Key;
            merges.Add(best);
            if (known.Add(best.Item1 + best.Item2)) vocab.Add(best.Item1 + best.Item2);
            foreach (var syms in split.Values)
                for (int i = 0; i + 1 < syms.Count; i++)
                    if (syms[i] == best.Item1 && syms[i + 1] == best.Item2)
                    {
                        syms[i] = best.Item1 + best.Item2;
                        syms.RemoveAt(i + 1);
                    }
        }

        var vocabJson = new JsonObject();
        for (int i = 0; i < vocab.Count; i++) vocabJson[vocab[i]] = i;
        var mergesJson = new JsonArray(merges.Select(m => (JsonNode)new JsonArray(m.Item1, m.Item2)).ToArray());
        var tok = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(new JsonObject
            {
                ["id"] = 0, ["content"] = special, ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false, ["normalized"] = false, ["special"] = true,
            }),
            ["normalizer"] = new JsonObject { ["type"] = "NFC" },
            ["pre_tokenizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["pretokenizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = Qwen2Pattern }, ["behavior"] = "Isolated", ["invert"] = false },
                    new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = false, ["use_regex"] = false }),
            },
            ["post_processor"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = false, ["use_regex"] = false },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = false, ["use_regex"] = false },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["continuing_subword_prefix"] = "", ["end_of_word_suffix"] = "",
                ["fuse_unk"] = false, ["byte_fallback"] = false, ["ignore_merges"] = false, ["vocab"] = vocabJson, ["merges"] = mergesJson,
            },
        };
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), tok.ToJsonString(new() { WriteIndented = false }));
        var tcfg = new JsonObject { ["bos_token"] = null, ["eos_token"] = special, ["tokenizer_class"] = "Qwen2Tokenizer" };
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), tcfg.ToJsonString(new() { WriteIndented = true }));
    }
}
