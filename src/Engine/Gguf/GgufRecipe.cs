namespace DotQuant.Engine.Gguf;

/// <summary>llama.cpp's file types (llama_ftype, stored as general.file_type).</summary>
public enum LlamaFileType : uint
{
    AllF32 = 0, MostlyF16 = 1, MostlyQ4_0 = 2, MostlyQ4_1 = 3, MostlyQ8_0 = 7, MostlyQ5_0 = 8, MostlyQ5_1 = 9,
    MostlyQ2_K = 10, MostlyQ3_K_S = 11, MostlyQ3_K_M = 12, MostlyQ3_K_L = 13, MostlyQ4_K_S = 14, MostlyQ4_K_M = 15,
    MostlyQ5_K_S = 16, MostlyQ5_K_M = 17, MostlyQ6_K = 18, MostlyBF16 = 32,
}

/// <summary>What a tensor is to llama.cpp's type selection.</summary>
public enum GgufTensorRole { TokenEmbedding, PositionEmbedding, Output, AttentionQ, AttentionK, AttentionV, AttentionOutput, FfnGate, FfnUp, FfnDown, Other }

/// <summary>The type of every tensor of a GGUF file of one named type, as llama-quantize chooses them
/// (llama-quant.cpp llama_tensor_get_type for the dense models we write): the mix's base type, more bits
/// where the named mixes put them (attn_v and ffn_down in the first, last and every third layer for
/// q4_k_m/q5_k_m, the output matrix Q6_K, ...), then the fallback for rows that are not a multiple of the
/// type's block (q4_k → q5_0, q5_k → q5_1, q6_k → q8_0, q2_k/q3_k → q4_0; F16 when even 32 does not
/// divide). Names follow llama-quantize, including its aliases q3_k/q4_k/q5_k for the _m mixes.</summary>
public sealed record GgufRecipe(string Name, LlamaFileType FileType, GgmlType Base)
{
    /// <summary>Quantized with an importance matrix: llama-quantize then guards the first eighth of the
    /// ffn_down layers of q4_0/q5_0 files with q4_1/q5_1.</summary>
    public bool WithImportance { get; init; }

    static readonly GgufRecipe[] All =
    [
        new("f32", LlamaFileType.AllF32, GgmlType.F32),
        new("f16", LlamaFileType.MostlyF16, GgmlType.F16),
        new("bf16", LlamaFileType.MostlyBF16, GgmlType.BF16),
        new("q8_0", LlamaFileType.MostlyQ8_0, GgmlType.Q8_0),
        new("q4_0", LlamaFileType.MostlyQ4_0, GgmlType.Q4_0),
        new("q4_1", LlamaFileType.MostlyQ4_1, GgmlType.Q4_1),
        new("q5_0", LlamaFileType.MostlyQ5_0, GgmlType.Q5_0),
        new("q5_1", LlamaFileType.MostlyQ5_1, GgmlType.Q5_1),
        new("q2_k", LlamaFileType.MostlyQ2_K, GgmlType.Q2_K),
        new("q3_k", LlamaFileType.MostlyQ3_K_M, GgmlType.Q3_K),
        new("q3_k_m", LlamaFileType.MostlyQ3_K_M, GgmlType.Q3_K),
        new("q4_k", LlamaFileType.MostlyQ4_K_M, GgmlType.Q4_K),
        new("q4_k_s", LlamaFileType.MostlyQ4_K_S, GgmlType.Q4_K),
        new("q4_k_m", LlamaFileType.MostlyQ4_K_M, GgmlType.Q4_K),
        new("q5_k", LlamaFileType.MostlyQ5_K_M, GgmlType.Q5_K),
        new("q5_k_m", LlamaFileType.MostlyQ5_K_M, GgmlType.Q5_K),
        new("q6_k", LlamaFileType.MostlyQ6_K, GgmlType.Q6_K),
    ];

    /// <summary>Single tensor types a layer rule may name.</summary>
    static readonly Dictionary<string, GgmlType> TensorTypes = new(StringComparer.Ordinal)
    {
        ["f32"] = GgmlType.F32, ["f16"] = GgmlType.F16, ["bf16"] = GgmlType.BF16, ["q8_0"] = GgmlType.Q8_0,
        ["q4_0"] = GgmlType.Q4_0, ["q4_1"] = GgmlType.Q4_1, ["q5_0"] = GgmlType.Q5_0, ["q5_1"] = GgmlType.Q5_1,
        ["q2_k"] = GgmlType.Q2_K, ["q3_k"] = GgmlType.Q3_K, ["q4_k"] = GgmlType.Q4_K, ["q5_k"] = GgmlType.Q5_K, ["q6_k"] = GgmlType.Q6_K,
    };

    public static IEnumerable<string> Names => All.Select(r => r.Name);
    public static IEnumerable<string> TensorTypeNames => TensorTypes.Keys;

    public static GgufRecipe? Parse(string name) => All.FirstOrDefault(r => r.Name == name.ToLowerInvariant());

    public static GgmlType? ParseTensorType(string name) => TensorTypes.TryGetValue(name.ToLowerInvariant(), out var t) ? t : null;

    /// <summary>The integer code width of a block type (what reports call its bits).</summary>
    public static int NominalBits(GgmlType t) => t switch
    {
        GgmlType.Q2_K => 2, GgmlType.Q3_K => 3, GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q4_K => 4,
        GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.Q5_K => 5, GgmlType.Q6_K => 6, GgmlType.Q8_0 => 8, _ => 16,
    };

    public bool IsFloat => Base is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16;

    public static GgufTensorRole RoleOf(string ggufName) => ggufName switch
    {
        "token_embd.weight" => GgufTensorRole.TokenEmbedding,
        "output.weight" => GgufTensorRole.Output,
        // llama.cpp (the build in LLamaSharp 0.30.0) gives a fused qkv the attn_v rules, and keeps learned
        // positions in the file's float type.
        _ when ggufName.Contains("attn_qkv.weight") => GgufTensorRole.AttentionV,
        "position_embd.weight" => GgufTensorRole.PositionEmbedding,
        _ when ggufName.Contains("attn_v.weight") => GgufTensorRole.AttentionV,
        _ when ggufName.Contains("attn_k.weight") => GgufTensorRole.AttentionK,
        _ when ggufName.Contains("attn_q.weight") => GgufTensorRole.AttentionQ,
        _ when ggufName.Contains("attn_output.weight") => GgufTensorRole.AttentionOutput,
        _ when ggufName.Contains("ffn_up") => GgufTensorRole.FfnUp,
        _ when ggufName.Contains("ffn_gate") => GgufTensorRole.FfnGate,
        _ when ggufName.Contains("ffn_down") => GgufTensorRole.FfnDown,
        _ => GgufTensorRole.Other,
    };

    /// <summary>The model facts the mixes look at.</summary>
    public sealed record ModelShape(int Layers, int QueryGroups, bool TiedEmbeddings, bool Is70B);

    /// <summary>The type of a matrix (vectors stay F32): <paramref name="layer"/> is its block index (−1
    /// outside the blocks); <paramref name="overrideType"/> is a layer rule's type, which replaces the mix's
    /// choice but still gets the fallback, as llama-quantize's --tensor-type.</summary>
    public GgmlType TypeFor(string ggufName, long rowLength, int layer, ModelShape model, GgmlType? overrideType = null)
    {
        if (IsFloat) return overrideType ?? Base;
        var t = overrideType ?? Choose(RoleOf(ggufName), rowLength, layer, model);
        return Fallback(t, rowLength);
    }

    GgmlType Choose(GgufTensorRole role, long rowLength, int layer, ModelShape model)
    {
        var t = Base;
        int n = model.Layers;
        bool MoreBits(int i) => i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
        switch (role)
        {
            case GgufTensorRole.Output:
            case GgufTensorRole.TokenEmbedding when model.TiedEmbeddings:
                return rowLength % GgmlTypeInfo.Of(t).BlockSize != 0 ? GgmlType.Q8_0 : t == GgmlType.Q8_0 ? t : GgmlType.Q6_K;
            case GgufTensorRole.AttentionV:
                t = FileType switch
                {
                    LlamaFileType.MostlyQ2_K => model.QueryGroups >= 4 ? GgmlType.Q4_K : GgmlType.Q3_K,
                    LlamaFileType.MostlyQ3_K_M => layer < 2 ? GgmlType.Q5_K : GgmlType.Q4_K,
                    LlamaFileType.MostlyQ4_K_M or LlamaFileType.MostlyQ5_K_M when MoreBits(layer) => GgmlType.Q6_K,
                    LlamaFileType.MostlyQ4_K_S when layer < 4 => GgmlType.Q5_K,
                    _ => t,
                };
                // Llama-2-70B's 8 query heads share each attn_v: more bits there cost almost nothing.
                if (model.Is70B && t is GgmlType.Q3_K or GgmlType.Q4_K) t = GgmlType.Q5_K;
                return t;
            case GgufTensorRole.FfnDown:
                return FileType switch
                {
                    LlamaFileType.MostlyQ2_K => GgmlType.Q3_K,
                    LlamaFileType.MostlyQ3_K_M => layer < n / 16 ? GgmlType.Q5_K : GgmlType.Q4_K,
                    LlamaFileType.MostlyQ4_K_M or LlamaFileType.MostlyQ5_K_M when MoreBits(layer) => GgmlType.Q6_K,
                    LlamaFileType.MostlyQ4_K_S when layer < n / 8 => GgmlType.Q5_K,
                    LlamaFileType.MostlyQ4_0 when WithImportance && layer < n / 8 => GgmlType.Q4_1,
                    LlamaFileType.MostlyQ5_0 when WithImportance && layer < n / 8 => GgmlType.Q5_1,
                    _ => t,
                };
            case GgufTensorRole.PositionEmbedding:
                return GgmlType.F32;
            case GgufTensorRole.AttentionOutput:
                return FileType switch
                {
                    LlamaFileType.MostlyQ2_K => GgmlType.Q3_K,
                    LlamaFileType.MostlyQ3_K_M => GgmlType.Q4_K,
                    _ => t,
                };
            default:
                return t;
        }
    }

    /// <summary>llama-quantize's tensor_type_fallback.</summary>
    public static GgmlType Fallback(GgmlType t, long rowLength)
    {
        if (rowLength % GgmlTypeInfo.Of(t).BlockSize == 0) return t;
        t = t switch
        {
            GgmlType.Q2_K or GgmlType.Q3_K => GgmlType.Q4_0,
            GgmlType.Q4_K => GgmlType.Q5_0,
            GgmlType.Q5_K => GgmlType.Q5_1,
            GgmlType.Q6_K => GgmlType.Q8_0,
            _ => t,
        };
        return rowLength % GgmlTypeInfo.Of(t).BlockSize == 0 ? t : GgmlType.F16;
    }
}
