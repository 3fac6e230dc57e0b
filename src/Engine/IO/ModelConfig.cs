using System.Text.Json;
using DotQuant.Runtime;

namespace DotQuant.Engine.IO;

/// <summary>quantization_config of a GPTQ checkpoint: v1 stores zero − 1, v2 the zero itself.</summary>
public sealed record GptqConfig(int Bits, int GroupSize, bool V2);

/// <summary>What Gemma 2 and Gemma 3 add to a decoder: RMSNorm as x̂·(1+w), √hidden embedding scale,
/// norms after attention and the MLP as well as before, 1/√query_pre_attn_scalar attention scale,
/// soft-capped attention and final logits (tanh(x/c)·c), and sliding-window layers with their own
/// RoPE base (Gemma 3's global layers alone carry rope_scaling).</summary>
public sealed record GemmaSettings(double QueryPreAttnScalar, double? AttnSoftcap, double? FinalSoftcap, int SlidingWindow, bool[] SlidingLayers, double LocalRopeTheta);

/// <summary>RoPE frequency scaling as in transformers' <c>rope_scaling</c>.</summary>
public sealed record RopeScaling(string Type, double Factor, double LowFreqFactor = 1, double HighFreqFactor = 4, int OriginalMaxPositions = 8192)
{
    /// <summary>LongRoPE (Phi-3): per-frequency divisors for sequences up to / beyond
    /// <see cref="OriginalMaxPositions"/>, and the factor cos and sin are scaled by.</summary>
    public double[]? ShortFactor { get; init; }
    public double[]? LongFactor { get; init; }
    public double AttentionFactor { get; init; } = 1;
}

/// <summary>The parts of a Hugging Face <c>config.json</c> a decoder needs, with each family's
/// defaults as transformers applies them. Unknown keys are ignored; missing required keys and
/// values of the wrong type are DQ0121 errors naming the key.</summary>
public sealed record ModelConfig
{
    public required string ModelType { get; init; }
    public required int HiddenSize { get; init; }
    public required int NumLayers { get; init; }
    public required int NumHeads { get; init; }
    public required int NumKvHeads { get; init; }
    public required int HeadDim { get; init; }
    public required int IntermediateSize { get; init; }
    public required int VocabSize { get; init; }
    public required double RmsNormEps { get; init; }
    public required double RopeTheta { get; init; }
    public RopeScaling? RopeScaling { get; init; }
    public required bool TieWordEmbeddings { get; init; }
    /// <summary>Bias on q/k/v projections (Qwen2 always; Llama with attention_bias).</summary>
    public required bool QkvBias { get; init; }
    /// <summary>Bias on the attention output projection (Llama's attention_bias covers o_proj too).</summary>
    public required bool OutputBias { get; init; }
    public required bool MlpBias { get; init; }
    /// <summary>RMSNorm over each head's queries and keys before rotary (Qwen3's q_norm/k_norm).</summary>
    public bool QkNorm { get; init; }
    /// <summary>q, k and v as one linear (qkv_proj), gate and up as one (gate_up_proj): Phi-3.</summary>
    public bool FusedProjections { get; init; }
    public GemmaSettings? Gemma { get; init; }
    /// <summary>How many leading dimensions of each head rotate (partial_rotary_factor · head_dim).</summary>
    public int RotaryDim { get; init; }
    public required int MaxPositionEmbeddings { get; init; }
    public int? SlidingWindow { get; init; }
    public required string HiddenAct { get; init; }
    public int? BosTokenId { get; init; }
    public int[] EosTokenIds { get; init; } = [];
    public string? TorchDtype { get; init; }
    /// <summary>Set when config.json describes a GPTQ checkpoint (quantization_config).</summary>
    public GptqConfig? Gptq { get; init; }

    /// <summary>QuaRot's R4 (spec §5.5): the down_proj input is multiplied online by a normalised
    /// Hadamard matrix, whose transpose is fused into down_proj. Set by DotQuant's rotated packages
    /// (config.json key <c>dotquant_rotation.down_proj_input = "hadamard"</c>).</summary>
    public bool DownProjHadamard { get; init; }

    public int KvGroups => NumHeads / NumKvHeads;
    /// <summary>Rotating dimensions per head (all of them unless partial_rotary_factor says otherwise).</summary>
    public int Rotary => RotaryDim > 0 ? RotaryDim : HeadDim;

    public static readonly string[] SupportedModelTypes = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3_text", "gpt2"];

    public static ModelConfig Load(string modelDir)
    {
        string path = Path.Combine(modelDir, "config.json");
        if (!File.Exists(path))
            throw new DotQuantException(ErrorCodes.ConfigMissing, $"config.json not found in {modelDir}", path);
        JsonDocument doc;
        try
        {
            byte[] bytes = File.ReadAllBytes(path);
            // JsonDocument checks a string's UTF-8 only when it is read, as an InvalidOperationException.
            if (!System.Text.Unicode.Utf8.IsValid(bytes))
                throw new DotQuantException(ErrorCodes.ConfigMissing, "config.json is not valid UTF-8", path);
            doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new DotQuantException(ErrorCodes.ConfigMissing, $"config.json is not well-formed JSON: {e.Message}", path);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new DotQuantException(ErrorCodes.ConfigMissing, $"config.json must hold a JSON object, not {doc.RootElement.ValueKind}", path);
            try
            {
                return Parse(doc.RootElement, path);
            }
            catch (InvalidOperationException e)
            {
                // A nested value of another type than the key's, or a string with a lone surrogate escape
                // (found by the fuzzer): JsonElement reports both this way.
                throw new DotQuantException(ErrorCodes.ConfigKey, $"config.json has a value of the wrong type or an invalid string: {e.Message}", path);
            }
        }
    }

    public static ModelConfig Parse(JsonElement root, string path)
    {
        var r = new Reader(root, path);
        string modelType = r.String("model_type") ?? throw r.Missing("model_type");
        if (!SupportedModelTypes.Contains(modelType))
            throw new DotQuantException(ErrorCodes.UnsupportedModelType,
                $"model_type '{modelType}' is not supported (supported: {string.Join(", ", SupportedModelTypes)})", path);

        if (modelType == "gpt2") return ParseGpt2(r, root, path);

        GptqConfig? gptq = null;
        if (root.TryGetProperty("quantization_config", out var qc) && qc.ValueKind == JsonValueKind.Object)
        {
            var qr = new Reader(qc, path, "quantization_config.");
            string method = qr.String("quant_method") ?? "unknown";
            string format = qr.String("checkpoint_format") ?? "gptq";
            if (method != "gptq" || format is not ("gptq" or "gptq_v2"))
                throw new DotQuantException(ErrorCodes.UnsupportedModelType,
                    $"the model is already quantized (quant_method {method}, format {format}); DotQuant reads GPTQ (v1/v2) checkpoints and needs a floating-point checkpoint to quantize", path);
            int bits = qr.Int("bits") ?? throw qr.Missing("bits");
            if (bits is < 2 or > 8)
                throw new DotQuantException(ErrorCodes.UnsupportedModelType, $"GPTQ checkpoint with {bits} bits is not supported", path);
            gptq = new GptqConfig(bits, qr.Int("group_size") ?? -1, format == "gptq_v2");
        }
        int hidden = r.Int("hidden_size") ?? throw r.Missing("hidden_size");
        int heads = r.Int("num_attention_heads") ?? throw r.Missing("num_attention_heads");
        int layers = r.Int("num_hidden_layers") ?? throw r.Missing("num_hidden_layers");
        int inter = r.Int("intermediate_size") ?? throw r.Missing("intermediate_size");
        int vocab = r.Int("vocab_size") ?? throw r.Missing("vocab_size");
        int kvHeads = r.Int("num_key_value_heads") ?? heads;
        if (heads <= 0 || hidden <= 0 || layers <= 0 || inter <= 0 || vocab <= 0 || kvHeads <= 0)
            throw new DotQuantException(ErrorCodes.ConfigInconsistent, "sizes in config.json must be positive", path);
        if (heads % kvHeads != 0)
            throw new DotQuantException(ErrorCodes.ConfigInconsistent, $"num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kvHeads})", path);
        int? headDimKey = r.Int("head_dim");
        if (headDimKey is null && hidden % heads != 0)
            throw new DotQuantException(ErrorCodes.ConfigInconsistent, $"hidden_size ({hidden}) is not a multiple of num_attention_heads ({heads}) and head_dim is not given", path);
        int headDim = headDimKey ?? hidden / heads;
        if (headDim % 2 != 0)
            throw new DotQuantException(ErrorCodes.ConfigInconsistent, $"head_dim ({headDim}) must be even for rotary embeddings", path);

        bool gemma = modelType is "gemma2" or "gemma3_text";
        string actKey = gemma && r.String("hidden_activation") is not null ? "hidden_activation" : "hidden_act";
        string act = r.String(actKey) ?? (gemma ? "gelu_pytorch_tanh" : "silu");
        if (gemma ? act is not ("gelu_pytorch_tanh" or "gelu_tanh") : act is not ("silu" or "swish"))
            throw new DotQuantException(ErrorCodes.UnsupportedModelType, $"{actKey} '{act}' is not supported for {modelType} (only {(gemma ? "gelu_pytorch_tanh" : "silu")})", path);

        bool attentionBias = r.Bool("attention_bias") ?? false;
        bool qwen = modelType == "qwen2", qwen3 = modelType == "qwen3";
        if ((qwen || qwen3) && (r.Bool("use_sliding_window") ?? false))
            throw new DotQuantException(ErrorCodes.UnsupportedModelType, $"{modelType}: use_sliding_window=true is not supported yet", path);
        bool phi3 = modelType == "phi3";
        int? sliding = modelType is "mistral" or "phi3" ? r.Int("sliding_window") : null;
        double partial = r.Double("partial_rotary_factor") ?? 1.0;
        int rotaryDim = (int)(headDim * partial);
        if (partial is <= 0 or > 1 || rotaryDim <= 0 || rotaryDim % 2 != 0)
            throw new DotQuantException(ErrorCodes.UnsupportedModelType, $"partial_rotary_factor {partial} gives {rotaryDim} rotary dimensions of {headDim}; it must be an even number > 0", path);
        int maxPositions = r.Int("max_position_embeddings") ?? 2048;

        return new ModelConfig
        {
            ModelType = modelType,
            HiddenSize = hidden,
            NumLayers = layers,
            NumHeads = heads,
            NumKvHeads = kvHeads,
            HeadDim = headDim,
            IntermediateSize = inter,
            VocabSize = vocab,
            RmsNormEps = r.Double("rms_norm_eps") ?? 1e-6,
            RopeTheta = r.Double("rope_theta") ?? 10000.0,
            RopeScaling = ParseRopeScaling(r, path, rotaryDim, maxPositions),
            TieWordEmbeddings = r.Bool("tie_word_embeddings") ?? gemma,
            QkvBias = qwen || attentionBias,
            OutputBias = !qwen && attentionBias,
            MlpBias = !qwen && !qwen3 && (r.Bool("mlp_bias") ?? false),
            QkNorm = qwen3 || modelType == "gemma3_text",
            Gemma = gemma ? ParseGemma(r, modelType, layers, headDim, path) : null,
            FusedProjections = phi3,
            RotaryDim = rotaryDim,
            MaxPositionEmbeddings = maxPositions,
            SlidingWindow = sliding,
            HiddenAct = act,
            BosTokenId = r.Int("bos_token_id"),
            EosTokenIds = r.IntOrInts("eos_token_id"),
            TorchDtype = r.String("torch_dtype") ?? r.String("dtype"),
            Gptq = gptq,
            DownProjHadamard = ParseRotation(root, path),
        };
    }

    /// <summary>GPT-2's own key names (transformers' GPT2Config attribute map: n_embd, n_layer, n_head,
    /// n_positions, n_inner); LayerNorm eps goes to <see cref="RmsNormEps"/>, the one norm epsilon.</summary>
    static ModelConfig ParseGpt2(Reader r, JsonElement root, string path)
    {
        if (root.TryGetProperty("quantization_config", out var qc) && qc.ValueKind == JsonValueKind.Object)
            throw new DotQuantException(ErrorCodes.UnsupportedModelType, "quantized GPT-2 checkpoints are not read yet; quantize the floating-point checkpoint", path);
        int hidden = r.Int("n_embd") ?? r.Int("hidden_size") ?? throw r.Missing("n_embd");
        int layers = r.Int("n_layer") ?? r.Int("num_hidden_layers") ?? throw r.Missing("n_layer");
        int heads = r.Int("n_head") ?? r.Int("num_attention_heads") ?? throw r.Missing("n_head");
        int vocab = r.Int("vocab_size") ?? throw r.Missing("vocab_size");
        int positions = r.Int("n_positions") ?? r.Int("n_ctx") ?? 1024;
        if (hidden <= 0 || layers <= 0 || heads <= 0 || vocab <= 0 || positions <= 0 || hidden % heads != 0)
            throw new DotQuantException(ErrorCodes.ConfigInconsistent, $"n_embd ({hidden}) must be a positive multiple of n_head ({heads}), and sizes positive", path);
        string act = r.String("activation_function") ?? "gelu_new";
        if (act is not ("gelu_new" or "gelu_pytorch_tanh"))
            throw new DotQuantException(ErrorCodes.UnsupportedModelType, $"activation_function '{act}' is not supported for gpt2 (gelu_new)", path);
        if (r.Bool("scale_attn_by_inverse_layer_idx") == true)
            throw new DotQuantException(ErrorCodes.UnsupportedModelType, "scale_attn_by_inverse_layer_idx=true is not supported for gpt2", path);
        if (r.Bool("scale_attn_weights") == false)
            throw new DotQuantException(ErrorCodes.UnsupportedModelType, "scale_attn_weights=false is not supported for gpt2", path);
        return new ModelConfig
        {
            ModelType = "gpt2", HiddenSize = hidden, NumLayers = layers, NumHeads = heads, NumKvHeads = heads, HeadDim = hidden / heads,
            IntermediateSize = r.Int("n_inner") ?? 4 * hidden, VocabSize = vocab, RmsNormEps = r.Double("layer_norm_epsilon") ?? 1e-5,
            RopeTheta = 10000, TieWordEmbeddings = r.Bool("tie_word_embeddings") ?? true, QkvBias = true, OutputBias = true, MlpBias = true,
            MaxPositionEmbeddings = positions, HiddenAct = "gelu_new", BosTokenId = r.Int("bos_token_id"), EosTokenIds = r.IntOrInts("eos_token_id"),
            TorchDtype = r.String("torch_dtype") ?? r.String("dtype"), FusedProjections = true,
        };
    }

    static GemmaSettings ParseGemma(Reader r, string modelType, int layers, int headDim, string path)
    {
        bool gemma3 = modelType == "gemma3_text";
        int window = r.Int("sliding_window") ?? 4096;
        bool[] sliding;
        if (r.Root.TryGetProperty("layer_types", out var lt) && lt.ValueKind == JsonValueKind.Array)
        {
            sliding = lt.EnumerateArray().Select(e => e.GetString() switch
            {
                "sliding_attention" => true,
                "full_attention" => false,
                var other => throw new DotQuantException(ErrorCodes.UnsupportedModelType, $"layer_types value '{other}' is not supported (sliding_attention, full_attention)", path),
            }).ToArray();
            if (sliding.Length != layers)
                throw new DotQuantException(ErrorCodes.ConfigInconsistent, $"layer_types has {sliding.Length} entries for {layers} layers", path);
        }
        else
        {
            // transformers: Gemma 2 slides on even layers; Gemma 3 on all but every sliding_window_pattern-th.
            int pattern = gemma3 ? r.Int("sliding_window_pattern") ?? 6 : 2;
            sliding = Enumerable.Range(0, layers).Select(i => gemma3 ? (i + 1) % pattern != 0 : i % 2 == 0).ToArray();
        }
        return new GemmaSettings(
            QueryPreAttnScalar: r.Double("query_pre_attn_scalar") ?? headDim,
            AttnSoftcap: r.Double("attn_logit_softcapping"),
            FinalSoftcap: r.Double("final_logit_softcapping"),
            SlidingWindow: window,
            SlidingLayers: sliding,
            LocalRopeTheta: gemma3 ? r.Double("rope_local_base_freq") ?? 10000 : r.Double("rope_theta") ?? 10000);
    }

    static bool ParseRotation(JsonElement root, string path)
    {
        if (!root.TryGetProperty("dotquant_rotation", out var rot) || rot.ValueKind == JsonValueKind.Null) return false;
        if (rot.ValueKind != JsonValueKind.Object)
            throw new DotQuantException(ErrorCodes.ConfigKey, "dotquant_rotation must be an object", path);
        string? down = new Reader(rot, path, "dotquant_rotation.").String("down_proj_input");
        return down switch
        {
            null or "none" => false,
            "hadamard" => true,
            _ => throw new DotQuantException(ErrorCodes.UnsupportedModelType, $"dotquant_rotation.down_proj_input '{down}' is not supported (hadamard, none)", path),
        };
    }

    static RopeScaling? ParseRopeScaling(Reader r, string path, int rotaryDim, int maxPositions)
    {
        if (!r.Root.TryGetProperty("rope_scaling", out var rs) || rs.ValueKind == JsonValueKind.Null) return null;
        if (rs.ValueKind != JsonValueKind.Object)
            throw new DotQuantException(ErrorCodes.ConfigKey, "rope_scaling must be an object or null", path);
        var sr = new Reader(rs, path, "rope_scaling.");
        string type = sr.String("rope_type") ?? sr.String("type") ?? throw sr.Missing("rope_type");
        switch (type)
        {
            case "default":
                return null;
            case "linear":
                return new RopeScaling("linear", sr.Double("factor") ?? throw sr.Missing("factor"));
            case "llama3":
                return new RopeScaling("llama3",
                    sr.Double("factor") ?? throw sr.Missing("factor"),
                    sr.Double("low_freq_factor") ?? throw sr.Missing("low_freq_factor"),
                    sr.Double("high_freq_factor") ?? throw sr.Missing("high_freq_factor"),
                    sr.Int("original_max_position_embeddings") ?? throw sr.Missing("original_max_position_embeddings"));
            case "longrope" or "su":
            {
                // transformers' _compute_longrope_parameters: the original length is the top-level key when
                // present (Phi-3), and the attention factor follows from max/original unless given.
                int? topLevel = r.Int("original_max_position_embeddings");
                int original = topLevel ?? sr.Int("original_max_position_embeddings") ?? maxPositions;
                double factor = topLevel is not null ? (double)maxPositions / original : sr.Double("factor") ?? 1.0;
                double attention = sr.Double("attention_factor") ?? (factor <= 1 ? 1.0 : Math.Sqrt(1 + Math.Log(factor) / Math.Log(original)));
                double[] Factors(string key)
                {
                    if (!rs.TryGetProperty(key, out var a) || a.ValueKind != JsonValueKind.Array)
                        throw sr.Missing(key);
                    var f = a.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.Number ? e.GetDouble() : double.NaN).ToArray();
                    if (f.Length != rotaryDim / 2 || f.Any(x => !(x > 0)))
                        throw new DotQuantException(ErrorCodes.ConfigKey, $"config.json 'rope_scaling.{key}' must hold {rotaryDim / 2} positive numbers (one per rotary frequency), not {f.Length}", path);
                    return f;
                }
                return new RopeScaling("longrope", factor, OriginalMaxPositions: original)
                {
                    ShortFactor = Factors("short_factor"), LongFactor = Factors("long_factor"), AttentionFactor = attention,
                };
            }
            default:
                throw new DotQuantException(ErrorCodes.UnsupportedModelType, $"rope_scaling type '{type}' is not supported (supported: linear, llama3, longrope)", path);
        }
    }

    /// <summary>Typed access to a JSON object; a present key of the wrong type is an error.</summary>
    sealed class Reader(JsonElement root, string path, string prefix = "")
    {
        public JsonElement Root => root;

        public DotQuantException Missing(string key) =>
            new(ErrorCodes.ConfigKey, $"config.json has no '{prefix}{key}'", path);

        DotQuantException Wrong(string key, string expected) =>
            new(ErrorCodes.ConfigKey, $"config.json '{prefix}{key}' must be {expected}", path);

        bool TryGet(string key, out JsonElement v) =>
            root.TryGetProperty(key, out v) && v.ValueKind != JsonValueKind.Null;

        public string? String(string key)
        {
            if (!TryGet(key, out var v)) return null;
            return v.ValueKind == JsonValueKind.String ? v.GetString() : throw Wrong(key, "a string");
        }

        public int? Int(string key)
        {
            if (!TryGet(key, out var v)) return null;
            if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i)) return i;
            if (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && d == Math.Floor(d) && Math.Abs(d) < int.MaxValue) return (int)d;
            throw Wrong(key, "an integer");
        }

        public double? Double(string key)
        {
            if (!TryGet(key, out var v)) return null;
            return v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw Wrong(key, "a number");
        }

        public bool? Bool(string key)
        {
            if (!TryGet(key, out var v)) return null;
            return v.ValueKind switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw Wrong(key, "true or false"),
            };
        }

        public int[] IntOrInts(string key)
        {
            if (!TryGet(key, out var v)) return [];
            if (v.ValueKind == JsonValueKind.Array)
                return v.EnumerateArray().Select(e => e.TryGetInt32(out int i) ? i : throw Wrong(key, "an integer or a list of integers")).ToArray();
            return [Int(key)!.Value];
        }
    }
}
