using DotQuant.Runtime;
using DotQuant.Engine.IO;

namespace DotQuant.Engine.Gguf;

/// <summary>One checkpoint tensor as llama.cpp names and orders it. <see cref="RowOrder"/>, when set,
/// gives for each GGUF row the checkpoint row it holds (rows are independent in every GGUF type, so
/// quantized rows are permuted exactly like float ones).</summary>
public sealed record GgufTensorMapping(string Source, string Name, long[] Shape, int[]? RowOrder)
{
    /// <summary>Added to every value on the way into GGUF (Gemma's norms are stored as 1 + w, as
    /// llama.cpp's converter stores them) and subtracted on the way back.</summary>
    public float Offset { get; init; }
    public bool IsMatrix => Shape.Length == 2;
    /// <summary>ggml dims: the torch shape reversed.</summary>
    public long[] Dims => Shape.Reverse().ToArray();
}

/// <summary>A tensor llama.cpp needs that the checkpoint does not hold: it follows from config.json
/// (Phi-3's LongRoPE factors), and every writer puts it first.</summary>
public sealed record GgufConstant(string Name, float[] Values)
{
    public long[] Dims => [Values.Length];
}

/// <summary>How the Llama family (llama, mistral → llama.cpp's "llama"; qwen2, qwen3, phi3 → their own) is laid out
/// in GGUF: tensor names, llama.cpp's q/k row order, the architecture's hyperparameter keys. What
/// llama.cpp's converter does, in .NET; what it cannot represent is refused (DQ0115).</summary>
public static class GgufArchitectures
{
    public static string Architecture(ModelConfig c) => c.ModelType switch
    {
        "llama" or "mistral" => "llama",
        "qwen2" => "qwen2",
        "qwen3" => "qwen3",
        "phi3" => "phi3",
        "gemma2" => "gemma2",
        "gemma3_text" => "gemma3",
        "gpt2" => "gpt2",
        _ => throw new DotQuantException(ErrorCodes.GgufUnsupported, $"model_type '{c.ModelType}' has no GGUF layout here"),
    };

    /// <summary>llama.cpp's "llama" rotary is interleaved (pairs 2i, 2i+1) where transformers rotates
    /// halves; its converter reorders q and k rows per head (convert_hf_to_gguf.py LlamaModel.permute).</summary>
    static bool PermutesQk(ModelConfig c) => Architecture(c) == "llama";

    public static IReadOnlyList<GgufTensorMapping> Tensors(ModelConfig c, Func<string, bool> contains)
    {
        if (c.ModelType == "gpt2") return Gpt2Tensors(c, contains);
        Refuse(c);
        long h = c.HiddenSize, q = (long)c.NumHeads * c.HeadDim, kv = (long)c.NumKvHeads * c.HeadDim, f = c.IntermediateSize;
        var list = new List<GgufTensorMapping> { new("model.embed_tokens.weight", "token_embd.weight", [c.VocabSize, h], null) };
        for (int i = 0; i < c.NumLayers; i++)
        {
            string p = $"model.layers.{i}.", b = $"blk.{i}.";
            if (c.Gemma is not null)
            {
                GgufTensorMapping Norm(string source, string name, long length) => new(p + source, b + name, [length], null) { Offset = 1 };
                list.Add(Norm("input_layernorm.weight", "attn_norm.weight", h));
                list.Add(new(p + "self_attn.q_proj.weight", b + "attn_q.weight", [q, h], null));
                list.Add(new(p + "self_attn.k_proj.weight", b + "attn_k.weight", [kv, h], null));
                list.Add(new(p + "self_attn.v_proj.weight", b + "attn_v.weight", [kv, h], null));
                if (c.QkNorm)
                {
                    list.Add(Norm("self_attn.q_norm.weight", "attn_q_norm.weight", c.HeadDim));
                    list.Add(Norm("self_attn.k_norm.weight", "attn_k_norm.weight", c.HeadDim));
                }
                list.Add(new(p + "self_attn.o_proj.weight", b + "attn_output.weight", [h, q], null));
                list.Add(Norm("post_attention_layernorm.weight", "post_attention_norm.weight", h));
                list.Add(Norm("pre_feedforward_layernorm.weight", "ffn_norm.weight", h));
                list.Add(new(p + "mlp.gate_proj.weight", b + "ffn_gate.weight", [f, h], null));
                list.Add(new(p + "mlp.up_proj.weight", b + "ffn_up.weight", [f, h], null));
                list.Add(new(p + "mlp.down_proj.weight", b + "ffn_down.weight", [h, f], null));
                list.Add(Norm("post_feedforward_layernorm.weight", "post_ffw_norm.weight", h));
                continue;
            }
            if (c.FusedProjections)
            {
                // Phi-3: llama.cpp's attn_qkv is [q | k | v] rows and ffn_up is [gate | up] rows, as in the checkpoint.
                list.Add(new(p + "input_layernorm.weight", b + "attn_norm.weight", [h], null));
                list.Add(new(p + "self_attn.qkv_proj.weight", b + "attn_qkv.weight", [q + 2 * kv, h], null));
                list.Add(new(p + "self_attn.o_proj.weight", b + "attn_output.weight", [h, q], null));
                list.Add(new(p + "post_attention_layernorm.weight", b + "ffn_norm.weight", [h], null));
                list.Add(new(p + "mlp.gate_up_proj.weight", b + "ffn_up.weight", [2 * f, h], null));
                list.Add(new(p + "mlp.down_proj.weight", b + "ffn_down.weight", [h, f], null));
                continue;
            }
            int[]? qOrder = PermutesQk(c) ? HeadPairOrder(c.NumHeads, (int)q) : null;
            int[]? kOrder = PermutesQk(c) ? HeadPairOrder(c.NumKvHeads, (int)kv) : null;
            list.Add(new(p + "input_layernorm.weight", b + "attn_norm.weight", [h], null));
            list.Add(new(p + "self_attn.q_proj.weight", b + "attn_q.weight", [q, h], qOrder));
            list.Add(new(p + "self_attn.k_proj.weight", b + "attn_k.weight", [kv, h], kOrder));
            list.Add(new(p + "self_attn.v_proj.weight", b + "attn_v.weight", [kv, h], null));
            if (c.QkvBias)
            {
                list.Add(new(p + "self_attn.q_proj.bias", b + "attn_q.bias", [q], qOrder));
                list.Add(new(p + "self_attn.k_proj.bias", b + "attn_k.bias", [kv], kOrder));
                list.Add(new(p + "self_attn.v_proj.bias", b + "attn_v.bias", [kv], null));
            }
            if (c.QkNorm)
            {
                list.Add(new(p + "self_attn.q_norm.weight", b + "attn_q_norm.weight", [c.HeadDim], null));
                list.Add(new(p + "self_attn.k_norm.weight", b + "attn_k_norm.weight", [c.HeadDim], null));
            }
            list.Add(new(p + "self_attn.o_proj.weight", b + "attn_output.weight", [h, q], null));
            if (c.OutputBias) list.Add(new(p + "self_attn.o_proj.bias", b + "attn_output.bias", [h], null));
            list.Add(new(p + "post_attention_layernorm.weight", b + "ffn_norm.weight", [h], null));
            list.Add(new(p + "mlp.gate_proj.weight", b + "ffn_gate.weight", [f, h], null));
            list.Add(new(p + "mlp.up_proj.weight", b + "ffn_up.weight", [f, h], null));
            list.Add(new(p + "mlp.down_proj.weight", b + "ffn_down.weight", [h, f], null));
        }
        list.Add(new("model.norm.weight", "output_norm.weight", [h], null) { Offset = c.Gemma is null ? 0 : 1 });
        // A tied head is token_embd itself: llama.cpp falls back to it when output.weight is absent.
        if (!c.TieWordEmbeddings && contains("lm_head.weight"))
            list.Add(new("lm_head.weight", "output.weight", [c.VocabSize, h], null));
        return list;
    }

    // Phi-3's sliding_window is not written: llama.cpp's phi3 graph disables SWA (it logs so), so beyond
    // the window llama.cpp and transformers differ for every Phi-3 GGUF; ours included.

    /// <summary>Tensors derived from the config, written before the checkpoint's (LongRoPE's per-frequency
    /// factors, as convert_hf_to_gguf writes them for Phi-3).</summary>
    public static IReadOnlyList<GgufConstant> Constants(ModelConfig c) =>
        c.RopeScaling is { Type: "longrope", LongFactor: { } longFactor, ShortFactor: { } shortFactor }
            ? [new("rope_factors_long.weight", longFactor.Select(x => (float)x).ToArray()),
               new("rope_factors_short.weight", shortFactor.Select(x => (float)x).ToArray())]
            : [];

    /// <summary>GGUF row r holds checkpoint row order[r]: per head, rows (s, i) of the halves layout
    /// [2, d/2] become (i, s), i.e. reshape(heads, 2, d/2).swapaxes(1, 2).</summary>
    public static int[] HeadPairOrder(int heads, int rows)
    {
        int half = rows / heads / 2;
        var order = new int[rows];
        for (int head = 0; head < heads; head++)
            for (int i = 0; i < half; i++)
                for (int s = 0; s < 2; s++)
                    order[head * 2 * half + i * 2 + s] = head * 2 * half + s * half + i;
        return order;
    }

    /// <summary>GPT-2 as convert_hf_to_gguf writes it (Conv1D weights already turned to [out, in] by the
    /// model's weight view): learned positions, LayerNorm weight and bias, fused qkv, biases everywhere.</summary>
    static IReadOnlyList<GgufTensorMapping> Gpt2Tensors(ModelConfig c, Func<string, bool> contains)
    {
        string pre = contains("transformer.wte.weight") ? "transformer." : "";
        long h = c.HiddenSize, f = c.IntermediateSize;
        var list = new List<GgufTensorMapping>
        {
            new(pre + "wte.weight", "token_embd.weight", [c.VocabSize, h], null),
            new(pre + "wpe.weight", "position_embd.weight", [c.MaxPositionEmbeddings, h], null),
        };
        void Both(string source, string name, long[] shape)
        {
            list.Add(new(source + ".weight", name + ".weight", shape, null));
            list.Add(new(source + ".bias", name + ".bias", [shape[0]], null));
        }
        for (int i = 0; i < c.NumLayers; i++)
        {
            string p = $"{pre}h.{i}.", b = $"blk.{i}.";
            Both(p + "ln_1", b + "attn_norm", [h]);
            Both(p + "attn.c_attn", b + "attn_qkv", [3 * h, h]);
            Both(p + "attn.c_proj", b + "attn_output", [h, h]);
            Both(p + "ln_2", b + "ffn_norm", [h]);
            Both(p + "mlp.c_fc", b + "ffn_up", [f, h]);
            Both(p + "mlp.c_proj", b + "ffn_down", [h, f]);
        }
        Both(pre + "ln_f", "output_norm", [h]);
        if (!c.TieWordEmbeddings && contains("lm_head.weight"))
            list.Add(new("lm_head.weight", "output.weight", [c.VocabSize, h], null));
        return list;
    }

    public static IEnumerable<KeyValuePair<string, GgufValue>> Hyperparameters(ModelConfig c)
    {
        string a = Architecture(c);
        yield return new($"{a}.context_length", GgufValue.Of((uint)c.MaxPositionEmbeddings));
        yield return new($"{a}.embedding_length", GgufValue.Of((uint)c.HiddenSize));
        yield return new($"{a}.block_count", GgufValue.Of((uint)c.NumLayers));
        yield return new($"{a}.feed_forward_length", GgufValue.Of((uint)c.IntermediateSize));
        yield return new($"{a}.attention.head_count", GgufValue.Of((uint)c.NumHeads));
        if (a == "gpt2")
        {
            // GPT-2: LayerNorm, learned positions, no KV grouping or rotary keys.
            yield return new($"{a}.attention.layer_norm_epsilon", GgufValue.Of((float)c.RmsNormEps));
            yield break;
        }
        yield return new($"{a}.attention.head_count_kv", GgufValue.Of((uint)c.NumKvHeads));
        yield return new($"{a}.rope.freq_base", GgufValue.Of((float)c.RopeTheta));
        yield return new($"{a}.attention.layer_norm_rms_epsilon", GgufValue.Of((float)c.RmsNormEps));
        if (c.HeadDim != c.HiddenSize / c.NumHeads || c.Gemma is not null)
        {
            yield return new($"{a}.attention.key_length", GgufValue.Of((uint)c.HeadDim));
            yield return new($"{a}.attention.value_length", GgufValue.Of((uint)c.HeadDim));
        }
        if (a is "llama" or "phi3")
            yield return new($"{a}.rope.dimension_count", GgufValue.Of((uint)c.Rotary));
        if (a == "llama")
            yield return new($"{a}.vocab_size", GgufValue.Of((uint)c.VocabSize));
        if (c.Gemma is { } g)
        {
            yield return new($"{a}.attention.sliding_window", GgufValue.Of((uint)g.SlidingWindow));
            if (g.AttnSoftcap is double ac) yield return new($"{a}.attn_logit_softcapping", GgufValue.Of((float)ac));
            if (g.FinalSoftcap is double fc) yield return new($"{a}.final_logit_softcapping", GgufValue.Of((float)fc));
        }
        if (c.RopeScaling is { Type: "longrope" } lr)
        {
            yield return new($"{a}.rope.scaling.attn_factor", GgufValue.Of((float)lr.AttentionFactor));
            yield return new($"{a}.rope.scaling.original_context_length", GgufValue.Of((uint)lr.OriginalMaxPositions));
        }
        if (c.RopeScaling is { Type: "linear" } s)
        {
            yield return new($"{a}.rope.scaling.type", GgufValue.Of("linear"));
            yield return new($"{a}.rope.scaling.factor", GgufValue.Of((float)s.Factor));
        }
    }

    /// <summary>What llama.cpp's gemma2/gemma3 graphs fix rather than read: the sliding pattern (every other
    /// layer; five of six), the local RoPE base (10000), the attention scale (1/√head_dim, or 1/√(hidden/heads)
    /// for the 27B shapes) and, for Gemma 3, no soft caps.</summary>
    static void RefuseGemma(ModelConfig c, GemmaSettings g)
    {
        bool gemma3 = c.ModelType == "gemma3_text";
        var expected = Enumerable.Range(0, c.NumLayers).Select(i => gemma3 ? i % 6 < 5 : i % 2 == 0);
        if (!g.SlidingLayers.SequenceEqual(expected))
            throw new DotQuantException(ErrorCodes.GgufUnsupported, $"layer_types: llama.cpp's {Architecture(c)} graph slides on {(gemma3 ? "five layers of every six" : "even layers")}; this model's pattern differs");
        bool is27B = c.NumLayers == (gemma3 ? 62 : 46);
        double scalar = is27B ? (double)c.HiddenSize / c.NumHeads : c.HeadDim;
        if (Math.Abs(g.QueryPreAttnScalar - scalar) > 1e-9)
            throw new DotQuantException(ErrorCodes.GgufUnsupported, $"query_pre_attn_scalar {g.QueryPreAttnScalar}: llama.cpp's {Architecture(c)} graph scales attention by 1/√{scalar}");
        if (gemma3 && Math.Abs(g.LocalRopeTheta - 10000) > 1e-9)
            throw new DotQuantException(ErrorCodes.GgufUnsupported, $"rope_local_base_freq {g.LocalRopeTheta}: llama.cpp's gemma3 graph uses 10000 on sliding layers");
        if (gemma3 && (g.AttnSoftcap is not null || g.FinalSoftcap is not null))
            throw new DotQuantException(ErrorCodes.GgufUnsupported, "soft-capping: llama.cpp's gemma3 graph has none");
    }

    static void Refuse(ModelConfig c)
    {
        if (c.RopeScaling is { } s && s.Type != "linear" && !(s.Type == "longrope" && Architecture(c) == "phi3"))
            throw new DotQuantException(ErrorCodes.GgufUnsupported, $"rope_scaling type '{s.Type}' is not written to GGUF yet (linear, none, and longrope for phi3 are)");
        if (c.Rotary != c.HeadDim && Architecture(c) != "phi3")
            throw new DotQuantException(ErrorCodes.GgufUnsupported, $"partial rotary ({c.Rotary} of {c.HeadDim}) is written to GGUF for phi3 only");
        if (c.DownProjHadamard)
            throw new DotQuantException(ErrorCodes.GgufUnsupported, "a QuaRot model applies an online Hadamard transform before down_proj, which llama.cpp's graph does not have");
        if (c.Gemma is { } g) RefuseGemma(c, g);
        else if (c.HiddenAct != "silu")
            throw new DotQuantException(ErrorCodes.GgufUnsupported, $"hidden_act '{c.HiddenAct}': llama.cpp's {Architecture(c)} graph uses SiLU");
        if (c.MlpBias)
            throw new DotQuantException(ErrorCodes.GgufUnsupported, "mlp_bias: llama.cpp's llama graph has no MLP biases");
    }
}
