using DotQuant.Runtime;
using DotQuant.Engine.IO;

namespace DotQuant.Engine.Gguf;

/// <summary>The transformers config a GGUF file's metadata stands for (llama and qwen2 architectures).</summary>
public static class GgufModelConfig
{
    /// <summary>A small F32 vector tensor's values (LongRoPE factors).</summary>
    static double[] Floats(GgufFile f, string name)
    {
        var t = f.Tensor(name) ?? throw new DotQuantException(ErrorCodes.WeightMissing, $"{name} is missing", f.Path);
        if (t.Type != GgmlType.F32 || t.Dims.Length != 1)
            throw new DotQuantException(ErrorCodes.GgufUnsupported, $"{name} must be an F32 vector", f.Path);
        return f.Decode(t).Select(x => (double)x).ToArray();
    }

    /// <summary>Gemma's settings as llama.cpp's graph applies them (fixed sliding pattern, local base 10000,
    /// 1/√head_dim unless 27B-shaped).</summary>
    static GemmaSettings GemmaOf(GgufFile f, string arch, int layers, int headDim, int hidden, int heads)
    {
        bool gemma3 = arch == "gemma3";
        double? Opt(string key) => f[$"{arch}.{key}"] is { } v ? v.AsFloat() : null;
        int window = f[$"{arch}.attention.sliding_window"] is { } w ? (int)w.AsInteger() : 4096;
        bool is27B = layers == (gemma3 ? 62 : 46);
        return new GemmaSettings(
            QueryPreAttnScalar: is27B ? (double)hidden / heads : headDim,
            AttnSoftcap: gemma3 ? null : Opt("attn_logit_softcapping"),
            FinalSoftcap: gemma3 ? null : Opt("final_logit_softcapping"),
            SlidingWindow: window,
            SlidingLayers: Enumerable.Range(0, layers).Select(i => gemma3 ? i % 6 < 5 : i % 2 == 0).ToArray(),
            LocalRopeTheta: gemma3 ? 10000 : Opt("rope.freq_base") ?? 10000);
    }

    public static ModelConfig From(GgufFile f)
    {
        string arch = f["general.architecture"]?.AsString()
            ?? throw new DotQuantException(ErrorCodes.GgufHeader, "general.architecture is missing", f.Path);
        if (arch is not ("llama" or "qwen2" or "qwen3" or "phi3" or "gemma2" or "gemma3" or "gpt2"))
            throw new DotQuantException(ErrorCodes.UnsupportedModelType, $"GGUF architecture '{arch}' is not supported (llama, qwen2, qwen3, phi3, gemma2, gemma3, gpt2)", f.Path);
        long Int(string key) => f[$"{arch}.{key}"] is { } v
            ? Checked(v, key)
            : throw new DotQuantException(ErrorCodes.GgufHeader, $"{arch}.{key} is missing", f.Path);
        long Checked(GgufValue v, string key)
        {
            try { return v.AsInteger(); }
            catch (InvalidCastException) { throw new DotQuantException(ErrorCodes.GgufHeader, $"{arch}.{key} is {v.Type}, not an integer", f.Path); }
        }
        // GGUF stores these as float32; the shortest decimal that round-trips recovers the config's
        // value (1e-5f → 1e-5), so a converted checkpoint evaluates exactly as the original.
        double Float(string key, double fallback) => f[$"{arch}.{key}"] is { } v
            ? v.Value is float single ? double.Parse(single.ToString("R", System.Globalization.CultureInfo.InvariantCulture), System.Globalization.CultureInfo.InvariantCulture) : v.AsFloat()
            : fallback;

        int hidden = (int)Int("embedding_length"), heads = (int)Int("attention.head_count");
        if (arch == "gpt2")
        {
            var wte = f.Tensor("token_embd.weight") ?? throw new DotQuantException(ErrorCodes.WeightMissing, "token_embd.weight is missing", f.Path);
            return new ModelConfig
            {
                ModelType = "gpt2", HiddenSize = hidden, NumLayers = (int)Int("block_count"), NumHeads = heads, NumKvHeads = heads,
                HeadDim = hidden / heads, IntermediateSize = (int)Int("feed_forward_length"), VocabSize = (int)wte.Dims[1],
                RmsNormEps = Float("attention.layer_norm_epsilon", 1e-5), RopeTheta = 10000, TieWordEmbeddings = f.Tensor("output.weight") is null,
                QkvBias = true, OutputBias = true, MlpBias = true, FusedProjections = true, HiddenAct = "gelu_new",
                MaxPositionEmbeddings = (int)Int("context_length"),
                BosTokenId = f["tokenizer.ggml.bos_token_id"] is { } gb ? (int)gb.AsInteger() : null,
                EosTokenIds = f["tokenizer.ggml.eos_token_id"] is { } ge ? [(int)ge.AsInteger()] : [],
            };
        }
        int kvHeads = f[$"{arch}.attention.head_count_kv"] is { } kv ? (int)kv.AsInteger() : heads;
        if (hidden <= 0 || heads <= 0 || kvHeads <= 0 || heads % kvHeads != 0)
            throw new DotQuantException(ErrorCodes.ConfigInconsistent, $"{arch}: {heads} heads, {kvHeads} KV heads, width {hidden} do not fit together", f.Path);
        int headDim = f[$"{arch}.attention.key_length"] is { } k ? (int)k.AsInteger() : hidden / heads;
        var embed = f.Tensor("token_embd.weight")
            ?? throw new DotQuantException(ErrorCodes.WeightMissing, "token_embd.weight is missing", f.Path);
        RopeScaling? scaling = f[$"{arch}.rope.scaling.type"]?.AsString() switch
        {
            null or "none" => null,
            "linear" => new RopeScaling("linear", Float("rope.scaling.factor", 1)),
            var other => throw new DotQuantException(ErrorCodes.GgufUnsupported, $"rope scaling '{other}' in GGUF is not supported yet", f.Path),
        };
        int rotary = f[$"{arch}.rope.dimension_count"] is { } rd ? (int)rd.AsInteger() : headDim;
        if (f.Tensor("rope_factors_short.weight") is not null)
            scaling = new RopeScaling("longrope", 1, OriginalMaxPositions: (int)Int("rope.scaling.original_context_length"))
            {
                ShortFactor = Floats(f, "rope_factors_short.weight"), LongFactor = Floats(f, "rope_factors_long.weight"),
                AttentionFactor = Float("rope.scaling.attn_factor", 1),
            };
        if (f.Tensor("rope_freqs.weight") is not null)
            throw new DotQuantException(ErrorCodes.GgufUnsupported, "rope_freqs (Llama 3.1 style frequency factors) in GGUF is not supported yet", f.Path);
        bool qkvBias = f.Tensor("blk.0.attn_q.bias") is not null;
        return new ModelConfig
        {
            ModelType = arch == "gemma3" ? "gemma3_text" : arch,
            HiddenSize = hidden,
            NumLayers = (int)Int("block_count"),
            NumHeads = heads,
            NumKvHeads = kvHeads,
            HeadDim = headDim,
            IntermediateSize = (int)Int("feed_forward_length"),
            VocabSize = (int)embed.Dims[1],
            RmsNormEps = Float("attention.layer_norm_rms_epsilon", 1e-6),
            RopeTheta = Float("rope.freq_base", 10000),
            RopeScaling = scaling,
            TieWordEmbeddings = f.Tensor("output.weight") is null,
            QkvBias = qkvBias,
            OutputBias = f.Tensor("blk.0.attn_output.bias") is not null,
            MlpBias = false,
            QkNorm = f.Tensor("blk.0.attn_q_norm.weight") is not null,
            FusedProjections = arch == "phi3",
            Gemma = arch.StartsWith("gemma", StringComparison.Ordinal) ? GemmaOf(f, arch, (int)Int("block_count"), headDim, hidden, heads) : null,
            RotaryDim = rotary,
            MaxPositionEmbeddings = f[$"{arch}.context_length"] is { } c ? (int)c.AsInteger() : 2048,
            HiddenAct = arch.StartsWith("gemma", StringComparison.Ordinal) ? "gelu_pytorch_tanh" : "silu",
            BosTokenId = f["tokenizer.ggml.bos_token_id"] is { } b ? (int)b.AsInteger() : null,
            EosTokenIds = f["tokenizer.ggml.eos_token_id"] is { } e ? [(int)e.AsInteger()] : [],
        };
    }
}
