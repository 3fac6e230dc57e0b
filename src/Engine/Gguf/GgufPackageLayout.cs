using DotQuant.Runtime;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;

namespace DotQuant.Engine.Gguf;

/// <summary>A checkpoint as one GGUF file of a named type: which checkpoint tensor becomes which GGUF
/// tensor (<see cref="GgufArchitectures"/>), and the type the named mix gives every matrix that is not a
/// calibrated linear (embeddings, head); the calibrated linears' types are decided with the run's plan
/// from the same recipe. Vectors (norms, biases) stay F32, as llama.cpp keeps them.</summary>
public sealed class GgufPackageLayout
{
    readonly Dictionary<string, GgufTensorMapping> _bySource;

    GgufPackageLayout(GgufRecipe recipe, ModelConfig config, IReadOnlyList<GgufTensorMapping> mappings)
    {
        Recipe = recipe;
        Config = config;
        Mappings = mappings;
        _bySource = mappings.ToDictionary(m => m.Source, StringComparer.Ordinal);
        Shape = ShapeOf(config, tied: !mappings.Any(m => m.Name == "output.weight"));
    }

    public GgufRecipe Recipe { get; }
    public ModelConfig Config { get; }
    public IReadOnlyList<GgufTensorMapping> Mappings { get; }
    public GgufRecipe.ModelShape Shape { get; }

    public static GgufPackageLayout For(ModelConfig config, IWeightSource weights, GgufRecipe recipe) =>
        new(recipe, config, GgufArchitectures.Tensors(config, weights.Contains));

    public static GgufRecipe.ModelShape ShapeOf(ModelConfig c, bool tied) =>
        new(c.NumLayers, c.NumHeads / c.NumKvHeads, tied, Is70B: GgufArchitectures.Architecture(c) == "llama" && c.NumLayers == 80 && c.NumKvHeads < c.NumHeads);

    /// <summary>The block index of a GGUF tensor name (blk.N.…), or −1.</summary>
    public static int LayerOf(string ggufName)
    {
        if (!ggufName.StartsWith("blk.", StringComparison.Ordinal)) return -1;
        int end = ggufName.IndexOf('.', 4);
        return end > 4 && int.TryParse(ggufName.AsSpan(4, end - 4), out int layer) ? layer : -1;
    }

    public GgufTensorMapping? Mapping(string source) => _bySource.GetValueOrDefault(source);

    /// <summary>Checkpoint tensors GGUF has no place for and needs none: a tied head stored twice, rotary
    /// tables llama.cpp computes itself. Anything else unmapped is refused.</summary>
    public bool Ignores(string source) =>
        (source == "lm_head.weight" && Shape.TiedEmbeddings) || source.EndsWith(".rotary_emb.inv_freq", StringComparison.Ordinal) ||
        // GPT-2 hub checkpoints keep their causal-mask buffers.
        source.EndsWith(".attn.bias", StringComparison.Ordinal) || source.EndsWith(".attn.masked_bias", StringComparison.Ordinal);

    /// <summary>The mapping of a checkpoint tensor the file must hold (DQ0115 when it has no GGUF name).</summary>
    public GgufTensorMapping Require(string source) => Mapping(source)
        ?? throw new DotQuantException(ErrorCodes.GgufUnsupported, $"tensor '{source}' has no place in llama.cpp's {GgufArchitectures.Architecture(Config)} layout");

    /// <summary>The type of a tensor that is not a calibrated linear.</summary>
    public GgmlType StoredType(GgufTensorMapping m) =>
        !m.IsMatrix ? GgmlType.F32 : Recipe.TypeFor(m.Name, m.Shape[1], LayerOf(m.Name), Shape);
}
