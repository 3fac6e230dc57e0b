using System.Text.Json;
using DotQuant.Engine.Calibration;
using DotQuant.Runtime;
using DotQuant.Engine.Evaluation;
using DotQuant.Engine.IO;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;
using DotQuant.Tests;
using Xunit;
using static TorchSharp.torch;

namespace DotQuant.Engine.Tests;

public class MemoryPlanTests
{
    /// <summary>A Llama-2-7B-shaped model that has shapes and no bytes (planning reads nothing).</summary>
    sealed class ShapesOnly(int layers) : IWeightSource
    {
        readonly Dictionary<string, long[]> _shapes = Build(layers);

        static Dictionary<string, long[]> Build(int layers)
        {
            var s = new Dictionary<string, long[]> { ["model.embed_tokens.weight"] = [32000, 4096], ["model.norm.weight"] = [4096], ["lm_head.weight"] = [32000, 4096] };
            for (int i = 0; i < layers; i++)
            {
                string p = $"model.layers.{i}.";
                foreach (var n in new[] { "q_proj", "k_proj", "v_proj", "o_proj" }) s[p + "self_attn." + n + ".weight"] = [4096, 4096];
                s[p + "mlp.gate_proj.weight"] = [11008, 4096];
                s[p + "mlp.up_proj.weight"] = [11008, 4096];
                s[p + "mlp.down_proj.weight"] = [4096, 11008];
                s[p + "input_layernorm.weight"] = [4096];
                s[p + "post_attention_layernorm.weight"] = [4096];
            }
            return s;
        }

        public string Directory => "/nowhere";
        public IReadOnlyList<string> Names => _shapes.Keys.Order(StringComparer.Ordinal).ToList();
        public bool Contains(string name) => _shapes.ContainsKey(name);
        public TensorShape? Describe(string name) => _shapes.TryGetValue(name, out var s) ? new TensorShape(ScalarType.BFloat16, s) : null;
        public Tensor Load(string name, params long[] expectedShape) => ones(_shapes[name], dtype: ScalarType.BFloat16);
        public Tensor LoadStored(string name) => Load(name);
    }

    static ModelConfig Config(int layers) => ModelConfig.Parse(JsonDocument.Parse(
        $$"""{"model_type":"llama","hidden_size":4096,"intermediate_size":11008,"num_hidden_layers":{{layers}},"num_attention_heads":32,"num_key_value_heads":32,"vocab_size":32000,"max_position_embeddings":4096,"rms_norm_eps":1e-5,"tie_word_embeddings":false}""").RootElement, "config.json");

    static QuantManifest Manifest(string quantize, string calibration = "") => ManifestParser.Parse(
        $"version: 1\nmodel: {SharedPaths.Stories260K}\ncalibration:\n  data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")}\n  samples: 8\n  sequence_length: 512\n{calibration}quantize:\n{quantize}output:\n  name: out\n",
        "/work/app/quant.yaml");

    static MemoryPlan Plan(QuantManifest m, int layers, long? limit = null)
    {
        using var model = ModelLoader.Open(Config(layers), new ShapesOnly(layers));
        return MemoryPlan.Predict(m, RunPlan.Create(m.Quantize, m.Output, model), model, limit, "test");
    }

    [Fact]
    public void The_plan_of_a_7B_shape_does_not_grow_with_depth_and_fits_6_GiB()
    {
        var m = Manifest("  method: gptq\n  bits: 4\n  group_size: 128\n");
        var (p8, p32) = (Plan(m, 8), Plan(m, 32));
        Assert.Equal(p8.Peak, p32.Peak);
        Assert.True(p32.Peak < 6L << 30, p32.Summary());
        // One block of 7B as stored (bf16) and the 11008² down_proj statistics dominate, as they should.
        Assert.Equal(2L * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096), p32.Block);
        // down_proj's solve: H, the factorization's L and H⁻¹ (then U), and the column loop's working set.
        Assert.True(p32.Solver >= 3L * 11008 * 11008 * 4, p32.Summary());
    }

    [Fact]
    public void Bf16_streams_halve_the_streams_and_gptaq_doubles_them()
    {
        var fp32 = Plan(Manifest("  method: gptq\n"), 4);
        var bf16 = Plan(Manifest("  method: gptq\n", "  stream_dtype: bf16\n"), 4);
        var gptaq = Plan(Manifest("  method: gptaq\n"), 4);
        Assert.Equal(fp32.Streams / 2, bf16.Streams);
        Assert.Equal(2 * fp32.Streams, gptaq.Streams);
        Assert.True(gptaq.Block > fp32.Block, "GPTAQ keeps a float copy of the block");
    }

    [Fact]
    public void A_plan_over_the_limit_is_refused_with_the_settings_that_fit()
    {
        // 1024 samples × 512 tokens of 7B streams: 8 GiB of fp32 activations.
        var m = Manifest("  method: gptq\n").Replace(8, 1024);
        var (plan, check) = Planned(m, 2, 9L << 30);
        var e = Assert.Throws<DotQuantException>(check);
        Assert.Equal(ErrorCodes.MemoryPlan, e.Code);
        Assert.Contains("stream_dtype: bf16", e.Message);
        var samples = int.Parse(System.Text.RegularExpressions.Regex.Match(e.Message, @"calibration\.samples: (\d+)").Groups[1].Value);
        Assert.InRange(samples, 100, 1023);
        // The limit must hold the plan (anonymous memory) and the mapped code (libtorch's, the runtime's).
        Assert.True(Plan(m.Replace(1024, samples), 2, 9L << 30).Peak + MemoryPlan.CodeBytes <= 9L << 30);
        Assert.True(Plan(m.Replace(1024, samples + 1), 2, 9L << 30).Peak + MemoryPlan.CodeBytes > 9L << 30, "the advice is the largest count that fits");
        Assert.Contains("--max-memory", e.Message);

        // Nothing in the manifest shrinks one block's solve: the message says so.
        var (_, tiny) = Planned(Manifest("  method: gptq\n"), 2, 1L << 30);
        Assert.Contains("No setting of the manifest makes it fit", Assert.Throws<DotQuantException>(tiny).Message);
        Planned(m, 2, 64L << 30).Check();
    }

    static (MemoryPlan Plan, Action Check) Planned(QuantManifest m, int layers, long limit)
    {
        var model = ModelLoader.Open(Config(layers), new ShapesOnly(layers));
        var run = RunPlan.Create(m.Quantize, m.Output, model);
        var plan = MemoryPlan.Predict(m, run, model, limit, "test");
        return (plan, () => plan.Check(m, run, model));
    }

    [Fact]
    public void Evaluation_in_several_passes_gives_the_same_bits_as_one()
    {
        var tok = HfTokenizer.Load(SharedPaths.Stories260K);
        var ids = tok.Encode(File.ReadAllText(SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt")));
        using var model = ModelLoader.Open(SharedPaths.Stories260K);
        var one = Perplexity.Windows(model, ids, 256, 48);
        // 48 windows in batches of 16; a budget of one batch's hidden states makes three passes.
        var three = Perplexity.Windows(model, ids, 256, 48, activationBudget: 16L * 256 * 64 * 4);
        Assert.Equal(one.Perplexity, three.Perplexity);
        Assert.Equal(one.PredictedTokens, three.PredictedTokens);
    }
}

static class ManifestSamples
{
    public static QuantManifest Replace(this QuantManifest m, int from, int to) =>
        m.Calibration!.Samples == from ? m with { Calibration = m.Calibration with { Samples = to } } : throw new ArgumentException("samples");
}
