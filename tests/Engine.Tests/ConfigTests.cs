using System.Text.Json;
using DotQuant.Runtime;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using DotQuant.Tests;
using static TorchSharp.torch;

namespace DotQuant.Engine.Tests;

public class ConfigTests
{
    static ModelConfig Parse(string json) => ModelConfig.Parse(JsonDocument.Parse(json).RootElement, "config.json");
    const string Base = "\"hidden_size\":64,\"num_attention_heads\":8,\"num_hidden_layers\":2,\"intermediate_size\":128,\"vocab_size\":100";

    [Fact]
    public void ReadsStories260K()
    {
        var c = ModelConfig.Load(SharedPaths.Stories260K);
        Assert.Equal("llama", c.ModelType);
        Assert.Equal((64, 5, 8, 4, 8, 172, 512), (c.HiddenSize, c.NumLayers, c.NumHeads, c.NumKvHeads, c.HeadDim, c.IntermediateSize, c.VocabSize));
        Assert.True(c.TieWordEmbeddings);
        Assert.False(c.QkvBias);
        Assert.Equal(1e-5, c.RmsNormEps);
        Assert.Equal(512, c.MaxPositionEmbeddings);
    }

    [Fact]
    public void AppliesFamilyDefaults()
    {
        var qwen = Parse("{\"model_type\":\"qwen2\"," + Base + ",\"num_key_value_heads\":2}");
        Assert.True(qwen.QkvBias);
        Assert.False(qwen.OutputBias);
        Assert.False(qwen.TieWordEmbeddings);
        Assert.Equal(4, qwen.KvGroups);
        Assert.Equal(8, qwen.HeadDim);

        var llama = Parse("{\"model_type\":\"llama\"," + Base + ",\"attention_bias\":true,\"mlp_bias\":true,\"head_dim\":16}");
        Assert.True(llama.QkvBias && llama.OutputBias && llama.MlpBias);
        Assert.Equal(16, llama.HeadDim);
        Assert.Equal(8, llama.NumKvHeads);

        var mistral = Parse("{\"model_type\":\"mistral\"," + Base + ",\"sliding_window\":4096}");
        Assert.Equal(4096, mistral.SlidingWindow);
    }

    [Theory]
    [InlineData("hidden_size")]
    [InlineData("num_attention_heads")]
    [InlineData("vocab_size")]
    [InlineData("model_type")]
    public void MissingRequiredKeyNamesIt(string key)
    {
        var dict = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>("{\"model_type\":\"llama\"," + Base + "}")!;
        dict.Remove(key);
        var e = Assert.Throws<DotQuantException>(() => Parse(JsonSerializer.Serialize(dict)));
        Assert.Equal(ErrorCodes.ConfigKey, e.Code);
        Assert.Contains(key, e.Message);
    }

    [Fact]
    public void WrongTypeUnsupportedTypeAndInconsistentSizesAreDiagnostics()
    {
        Assert.Equal(ErrorCodes.ConfigKey, Assert.Throws<DotQuantException>(() => Parse("{\"model_type\":\"llama\"," + Base.Replace("\"vocab_size\":100", "\"vocab_size\":\"big\"") + "}")).Code);
        Assert.Equal(ErrorCodes.UnsupportedModelType, Assert.Throws<DotQuantException>(() => Parse("{\"model_type\":\"mamba\"," + Base + "}")).Code);
        Assert.Equal(ErrorCodes.ConfigInconsistent, Assert.Throws<DotQuantException>(() => Parse("{\"model_type\":\"llama\"," + Base + ",\"num_key_value_heads\":3}")).Code);
        Assert.Equal(ErrorCodes.UnsupportedModelType, Assert.Throws<DotQuantException>(() => Parse("{\"model_type\":\"llama\"," + Base + ",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}")).Code);
    }

    /// <summary>Each family's unsupported values are DQ0122 naming the key; malformed ones DQ0121.</summary>
    [Theory]
    [InlineData("{\"model_type\":\"qwen3\",BASE,\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}", "DQ0122", "rope_scaling")]
    [InlineData("{\"model_type\":\"qwen3\",BASE,\"use_sliding_window\":true}", "DQ0122", "use_sliding_window")]
    [InlineData("{\"model_type\":\"phi3\",BASE,\"partial_rotary_factor\":0.1}", "DQ0122", "partial_rotary_factor")]
    [InlineData("{\"model_type\":\"phi3\",BASE,\"rope_scaling\":{\"type\":\"longrope\",\"short_factor\":[1,1],\"long_factor\":[1,1,1,1]}}", "DQ0121", "short_factor")]
    [InlineData("{\"model_type\":\"gemma2\",BASE,\"hidden_activation\":\"relu\"}", "DQ0122", "hidden_activation")]
    [InlineData("{\"model_type\":\"gemma3_text\",BASE,\"layer_types\":[\"chunked_attention\",\"full_attention\"]}", "DQ0122", "layer_types")]
    [InlineData("{\"model_type\":\"gpt2\",\"n_embd\":64,\"n_layer\":2,\"n_head\":4,\"vocab_size\":100,\"activation_function\":\"relu\"}", "DQ0122", "activation_function")]
    [InlineData("{\"model_type\":\"gpt2\",\"n_embd\":64,\"n_layer\":2,\"n_head\":4,\"vocab_size\":100,\"scale_attn_by_inverse_layer_idx\":true}", "DQ0122", "scale_attn_by_inverse_layer_idx")]
    [InlineData("{\"model_type\":\"gpt2\",\"n_layer\":2,\"n_head\":4,\"vocab_size\":100}", "DQ0121", "n_embd")]
    public void FamilyValuesWeCannotRunAreRefusedNamingTheKey(string json, string code, string key)
    {
        var e = Assert.Throws<DotQuantException>(() => Parse(json.Replace("BASE", Base)));
        Assert.Equal(code, e.Code);
        Assert.Contains(key, e.Message);
    }

    [Fact]
    public void MissingConfigFileIsADiagnostic()
    {
        using var dir = new TempDir();
        Assert.Equal(ErrorCodes.ConfigMissing, Assert.Throws<DotQuantException>(() => ModelConfig.Load(dir.Path)).Code);
    }

    [Fact]
    public void Llama3RopeScalingMatchesTransformersFormula()
    {
        // Llama 3.1 8B rope parameters; reference inverse frequencies recomputed from transformers'
        // _compute_llama3_parameters: high-frequency dims untouched, low-frequency dims divided by 8.
        var c = Parse("{\"model_type\":\"llama\",\"hidden_size\":4096,\"num_attention_heads\":32,\"num_hidden_layers\":1,\"intermediate_size\":8,\"vocab_size\":8," +
                      "\"rope_theta\":500000.0,\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192}}");
        using var rope = new Rope(c);
        var (cos, sin) = rope.Tables(1, 1);   // position 1: angle = inv_freq
        var angles = atan2(sin, cos)[0].data<float>().ToArray();
        double Inv(int i) => 1.0 / Math.Pow(500000.0, 2.0 * i / 128);
        Assert.Equal(Inv(0), angles[0], 1e-6);                      // wavelength 6.3 < 2048: unchanged
        Assert.Equal(Inv(63) / 8, angles[63], 1e-9);                // wavelength > 8192: divided by factor
        double w = 2 * Math.PI / Inv(30);                            // a medium band index
        Assert.InRange(w, 2048, 8192);
        double smooth = (8192 / w - 1) / 3;
        Assert.Equal((1 - smooth) * Inv(30) / 8 + smooth * Inv(30), angles[30], 1e-7);
    }

    [Fact]
    public void LinearRopeScalingDividesFrequencies()
    {
        var c = Parse("{\"model_type\":\"llama\"," + Base + ",\"rope_scaling\":{\"type\":\"linear\",\"factor\":4.0}}");
        using var rope = new Rope(c);
        var (cos, sin) = rope.Tables(4, 1);
        var angles = atan2(sin, cos)[0].data<float>().ToArray();
        Assert.Equal(1.0, angles[0], 1e-6);  // position 4 / factor 4 at inv_freq 1
    }
}
