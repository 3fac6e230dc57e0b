using DotQuant.Engine.Evaluation;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;
using DotQuant.Tests;
using static TorchSharp.torch;

namespace DotQuant.Engine.Tests;

/// <summary>Llama-family members other than stories260K, built synthetically (no pretrained Qwen2
/// or Mistral is available offline) and checked against a deliberately naive re-implementation:
/// explicit per-head softmax attention, per-pair rotary in double precision, no sdpa, no
/// repeat_interleave. Both must agree, so q/k/v bias, separate lm_head, GQA and the sliding
/// window all have to be wired correctly.</summary>
public class FamilyTests
{
    static readonly string SampleText = File.ReadAllText(SharedPaths.Data("tinystories", "stories-sample.txt"));

    static Tensor NaiveLogits(string dir, ModelConfig c, long[] ids)
    {
        using var ckpt = Checkpoint.Open(dir);
        Tensor W(string n) => ckpt.Load(n).to(ScalarType.Float64);
        Tensor? Bias(string n) => ckpt.Contains(n) ? W(n) : null;
        int t = ids.Length, d = c.HeadDim, hq = c.NumHeads, groups = c.KvGroups;
        var x = W("model.embed_tokens.weight").index_select(0, tensor(ids));
        Tensor Norm(Tensor v, Tensor w) => w * v / v.Squared().mean([-1], keepdim: true).add(Scalars.Of(c.RmsNormEps), Scalars.One).sqrt();
        // A fused projection (Phi-3) is read as its parts: rows [q | k | v], [gate | up].
        long qRows = (long)c.NumHeads * d, kvRows = (long)c.NumKvHeads * d;
        Tensor Weight(string n)
        {
            if (ckpt.Contains(n + ".weight")) return W(n + ".weight");
            string layer = n[..(n.LastIndexOf('.') + 1)], part = n[(n.LastIndexOf('.') + 1)..];
            return part switch
            {
                "q_proj" => W(layer + "qkv_proj.weight").narrow(0, 0, qRows),
                "k_proj" => W(layer + "qkv_proj.weight").narrow(0, qRows, kvRows),
                "v_proj" => W(layer + "qkv_proj.weight").narrow(0, qRows + kvRows, kvRows),
                "gate_proj" => W(layer + "gate_up_proj.weight").narrow(0, 0, c.IntermediateSize),
                _ => W(layer + "gate_up_proj.weight").narrow(0, c.IntermediateSize, c.IntermediateSize),
            };
        }
        Tensor Lin(Tensor v, string n) { var y = v.matmul(Weight(n).t()); var b = Bias(n + ".bias"); return b is null ? y : y.Plus(b); }
        // Rotary on the leading r dimensions, pairs (i, i + r/2); LongRoPE divides each frequency by its
        // short factor (these sequences are shorter than the original context) and scales cos and sin.
        int r = c.Rotary;
        double[] factors = c.RopeScaling?.ShortFactor ?? Enumerable.Repeat(1.0, r / 2).ToArray();
        double mscale = c.RopeScaling?.AttentionFactor ?? 1;
        Tensor Rot(Tensor v) // v [T, D]
        {
            var o = v.clone();
            for (int p = 0; p < t; p++)
                for (int i = 0; i < r / 2; i++)
                {
                    double ang = p / (factors[i] * Math.Pow(c.RopeTheta, 2.0 * i / r));
                    double a = v[p, i].item<double>(), b = v[p, i + r / 2].item<double>();
                    o[p, i] = mscale * (a * Math.Cos(ang) - b * Math.Sin(ang));
                    o[p, i + r / 2] = mscale * (b * Math.Cos(ang) + a * Math.Sin(ang));
                }
            return o;
        }
        for (int l = 0; l < c.NumLayers; l++)
        {
            string p = $"model.layers.{l}.";
            var h = Norm(x, W(p + "input_layernorm.weight"));
            var q = Lin(h, p + "self_attn.q_proj"); var k = Lin(h, p + "self_attn.k_proj"); var v = Lin(h, p + "self_attn.v_proj");
            var heads = new List<Tensor>();
            for (int hi = 0; hi < hq; hi++)
            {
                int kvh = hi / groups;
                Tensor QkNorm(Tensor x, string n) => ckpt.Contains(p + n) ? Norm(x, W(p + n)) : x;
                var qh = Rot(QkNorm(q.narrow(1, hi * d, d), "self_attn.q_norm.weight"));
                var kh = Rot(QkNorm(k.narrow(1, kvh * d, d), "self_attn.k_norm.weight"));
                var vh = v.narrow(1, kvh * d, d);
                var scores = qh.matmul(kh.t()).div(Scalars.Of(Math.Sqrt(d)));
                for (int i = 0; i < t; i++)
                    for (int j = 0; j < t; j++)
                        if (j > i || (c.SlidingWindow is int win && i - j >= win)) scores[i, j].fill_(Scalars.Of(double.NegativeInfinity));
                heads.Add(scores.softmax(-1).matmul(vh));
            }
            x = x.Plus(Lin(cat(heads, 1), p + "self_attn.o_proj"));
            h = Norm(x, W(p + "post_attention_layernorm.weight"));
            var g = Lin(h, p + "mlp.gate_proj");
            x = x.Plus(Lin(g * g.sigmoid() * Lin(h, p + "mlp.up_proj"), p + "mlp.down_proj"));
        }
        x = Norm(x, W("model.norm.weight"));
        var head = ckpt.Contains("lm_head.weight") && !c.TieWordEmbeddings ? W("lm_head.weight") : W("model.embed_tokens.weight");
        return x.matmul(head.t());
    }

    /// <summary>Gemma 2/3 written from the papers' description, in fp64: (1+w) norms before and after
    /// attention and MLP, √h embedding scale, 1/√query_pre_attn_scalar, tanh soft caps, per-layer window and
    /// rotary base (local layers: rope_local_base_freq, no scaling; global: rope_theta with linear scaling).</summary>
    static Tensor NaiveGemmaLogits(string dir, ModelConfig c, long[] ids)
    {
        using var ckpt = Checkpoint.Open(dir);
        var g = c.Gemma!;
        Tensor W(string n) => ckpt.Load(n).to(ScalarType.Float64);
        int t = ids.Length, d = c.HeadDim, hq = c.NumHeads, groups = c.KvGroups;
        var x = W("model.embed_tokens.weight").index_select(0, tensor(ids)).mul(Scalars.Of(Math.Sqrt(c.HiddenSize)));
        Tensor Norm(Tensor v, Tensor w) => w.add(Scalars.Of(1L), Scalars.One) * v / v.Squared().mean([-1], keepdim: true).add(Scalars.Of(c.RmsNormEps), Scalars.One).sqrt();
        Tensor Lin(Tensor v, string n) => v.matmul(W(n + ".weight").t());
        Tensor Rot(Tensor v, double theta, double scale)
        {
            var o = v.clone();
            for (int p = 0; p < t; p++)
                for (int i = 0; i < d / 2; i++)
                {
                    double ang = p / scale / Math.Pow(theta, 2.0 * i / d);
                    double a = v[p, i].item<double>(), b = v[p, i + d / 2].item<double>();
                    o[p, i] = a * Math.Cos(ang) - b * Math.Sin(ang);
                    o[p, i + d / 2] = b * Math.Cos(ang) + a * Math.Sin(ang);
                }
            return o;
        }
        for (int l = 0; l < c.NumLayers; l++)
        {
            string p = $"model.layers.{l}.";
            bool sliding = g.SlidingLayers[l];
            double theta = sliding ? g.LocalRopeTheta : c.RopeTheta;
            double scale = !sliding && c.RopeScaling is { Type: "linear" } rs ? rs.Factor : 1;
            var h = Norm(x, W(p + "input_layernorm.weight"));
            var q = Lin(h, p + "self_attn.q_proj"); var k = Lin(h, p + "self_attn.k_proj"); var v = Lin(h, p + "self_attn.v_proj");
            var heads = new List<Tensor>();
            for (int hi = 0; hi < hq; hi++)
            {
                int kvh = hi / groups;
                Tensor QkNorm(Tensor z, string n) => ckpt.Contains(p + n) ? Norm(z, W(p + n)) : z;
                var qh = Rot(QkNorm(q.narrow(1, hi * d, d), "self_attn.q_norm.weight"), theta, scale);
                var kh = Rot(QkNorm(k.narrow(1, kvh * d, d), "self_attn.k_norm.weight"), theta, scale);
                var scores = qh.matmul(kh.t()).div(Scalars.Of(Math.Sqrt(g.QueryPreAttnScalar)));
                if (g.AttnSoftcap is double cap) scores = scores.div(Scalars.Of(cap)).tanh().mul(Scalars.Of(cap));
                for (int i = 0; i < t; i++)
                    for (int j = 0; j < t; j++)
                        if (j > i || (sliding && i - j >= g.SlidingWindow)) scores[i, j].fill_(Scalars.Of(double.NegativeInfinity));
                heads.Add(scores.softmax(-1).matmul(v.narrow(1, kvh * d, d)));
            }
            x = x.Plus(Norm(Lin(cat(heads, 1), p + "self_attn.o_proj"), W(p + "post_attention_layernorm.weight")));
            h = Norm(x, W(p + "pre_feedforward_layernorm.weight"));
            var gate = Lin(h, p + "mlp.gate_proj");
            var gelu = GeluTanh(gate);
            x = x.Plus(Norm(Lin(gelu * Lin(h, p + "mlp.up_proj"), p + "mlp.down_proj"), W(p + "post_feedforward_layernorm.weight")));
        }
        x = Norm(x, W("model.norm.weight"));
        var logits = x.matmul(W("model.embed_tokens.weight").t());
        return g.FinalSoftcap is double fc ? logits.div(Scalars.Of(fc)).tanh().mul(Scalars.Of(fc)) : logits;
    }

    /// <summary>GPT-2 straight from the checkpoint: Conv1D weights used as stored (x·W + b, W [in, out]),
    /// learned positions, LayerNorm with bias, per-head softmax attention, tanh GeLU, tied head.</summary>
    static Tensor NaiveGpt2Logits(string dir, ModelConfig c, long[] ids)
    {
        using var ckpt = Checkpoint.Open(dir);
        Tensor W(string n) => ckpt.Load(n).to(ScalarType.Float64);
        int t = ids.Length, d = c.HeadDim, h = c.HiddenSize;
        var x = W("transformer.wte.weight").index_select(0, tensor(ids)).Plus(W("transformer.wpe.weight").narrow(0, 0, t));
        Tensor Ln(Tensor v, string n)
        {
            var mu = v.mean([-1], keepdim: true);
            var var_ = (v - mu).Squared().mean([-1], keepdim: true);
            return ((v - mu) / var_.add(Scalars.Of(c.RmsNormEps), Scalars.One).sqrt() * W(n + ".weight")).Plus(W(n + ".bias"));
        }
        Tensor Conv(Tensor v, string n) => v.matmul(W(n + ".weight")).Plus(W(n + ".bias"));
        for (int l = 0; l < c.NumLayers; l++)
        {
            string p = $"transformer.h.{l}.";
            var qkv = Conv(Ln(x, p + "ln_1"), p + "attn.c_attn");
            var heads = new List<Tensor>();
            for (int hi = 0; hi < c.NumHeads; hi++)
            {
                var q = qkv.narrow(1, hi * d, d); var k = qkv.narrow(1, h + hi * d, d); var v = qkv.narrow(1, 2 * h + hi * d, d);
                var scores = q.matmul(k.t()).div(Scalars.Of(Math.Sqrt(d)));
                for (int i = 0; i < t; i++)
                    for (int j = i + 1; j < t; j++) scores[i, j].fill_(Scalars.Of(double.NegativeInfinity));
                heads.Add(scores.softmax(-1).matmul(v));
            }
            x = x.Plus(Conv(cat(heads, 1), p + "attn.c_proj"));
            var a = Conv(Ln(x, p + "ln_2"), p + "mlp.c_fc");
            var gelu = GeluTanh(a);
            x = x.Plus(Conv(gelu, p + "mlp.c_proj"));
        }
        return Ln(x, "transformer.ln_f").matmul(W("transformer.wte.weight").t());
    }

    /// <summary>0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).</summary>
    static Tensor GeluTanh(Tensor x)
    {
        var inner = x.Plus(x.pow(Scalars.Of(3L)).mul(Scalars.Of(0.044715))).mul(Scalars.Of(Math.Sqrt(2 / Math.PI)));
        return x.mul(Scalars.Of(0.5)) * inner.tanh().add(Scalars.Of(1L), Scalars.One);
    }

    static void AssertMatchesNaive(string dir, long[] ids)
    {
        var c = ModelConfig.Load(dir);
        // The references make many temporaries: the scope keeps each alive (and frees it) deterministically.
        using var scope = NewDisposeScope();
        using var model = ModelLoader.Load(dir);
        using var ours = model.Forward(tensor(ids, [1, ids.Length]))[0].to(ScalarType.Float64);
        using var naive = c.ModelType == "gpt2" ? NaiveGpt2Logits(dir, c, ids) : c.Gemma is null ? NaiveLogits(dir, c, ids) : NaiveGemmaLogits(dir, c, ids);
        double err = (ours - naive).abs().max().item<double>();
        double scale = naive.abs().max().item<double>();
        Assert.True(err <= 1e-4 * Math.Max(1, scale), $"max |Δlogit| = {err} (scale {scale})");
    }

    [Fact]
    public void Qwen2WithBiasSeparateHeadAndGqaMatchesNaiveReference()
    {
        using var dir = new TempDir();
        SyntheticModel.Write(dir.Path, new SyntheticModel.Spec
        {
            ModelType = "qwen2", HiddenSize = 48, Heads = 6, KvHeads = 2, Layers = 2, IntermediateSize = 96,
            VocabSize = 320, TieWordEmbeddings = false, RopeTheta = 1_000_000, TokenizerText = SampleText,
        });
        var c = ModelConfig.Load(dir.Path);
        Assert.True(c.QkvBias && !c.TieWordEmbeddings && c.KvGroups == 3);
        AssertMatchesNaive(dir.Path, [5, 17, 300, 2, 99, 41, 41, 7, 250]);
    }

    /// <summary>Qwen3: per-head RMSNorm of queries and keys before rotary, head_dim decoupled from
    /// hidden/heads (here 16 with hidden 48 and 6 heads), no biases.</summary>
    [Fact]
    public void Qwen3WithQkNormAndExplicitHeadDimMatchesNaiveReference()
    {
        using var dir = new TempDir();
        SyntheticModel.Write(dir.Path, new SyntheticModel.Spec
        {
            ModelType = "qwen3", HiddenSize = 48, Heads = 6, KvHeads = 2, HeadDim = 16, Layers = 2, IntermediateSize = 96,
            VocabSize = 320, TieWordEmbeddings = true, RopeTheta = 1_000_000,
        });
        var c = ModelConfig.Load(dir.Path);
        Assert.True(c.QkNorm && !c.QkvBias && c.HeadDim == 16);
        AssertMatchesNaive(dir.Path, [5, 17, 300, 2, 99, 41, 41, 7, 250]);
    }

    /// <summary>Phi-3 / Phi-4-mini: fused qkv_proj and gate_up_proj (one linear each), partial rotary
    /// (3/4 of each head), LongRoPE with per-frequency factors and its attention factor.</summary>
    [Fact]
    public void Phi3WithFusedProjectionsPartialRotaryAndLongRopeMatchesNaiveReference()
    {
        using var dir = new TempDir();
        SyntheticModel.Write(dir.Path, SyntheticFamilies.Spec("phi3", originalContext: 32) with { VocabSize = 320 });
        var c = ModelConfig.Load(dir.Path);
        Assert.True(c.FusedProjections && c.Rotary == 12 && c.RopeScaling is { Type: "longrope", AttentionFactor: > 1 });
        using (var model = ModelLoader.Open(dir.Path))
            Assert.Equal(["model.layers.0.self_attn.qkv_proj"], model.LinearLayout(0)[0].Select(l => l.Name));
        AssertMatchesNaive(dir.Path, [5, 17, 300, 2, 99, 41, 41, 7, 250]);
    }

    /// <summary>Gemma 2 (soft caps, sliding even layers) and Gemma 3 (q/k norms, local/global rotary bases,
    /// linear scaling on global layers only); 12 tokens against a window of 8.</summary>
    [Theory]
    [InlineData("gemma2")]
    [InlineData("gemma3_text")]
    public void GemmaMatchesNaiveReference(string family)
    {
        using var dir = new TempDir();
        SyntheticModel.Write(dir.Path, SyntheticFamilies.Spec(family) with { VocabSize = 320 });
        var c = ModelConfig.Load(dir.Path);
        Assert.True(c.Gemma is { SlidingWindow: 8 } g && g.SlidingLayers.Contains(true) && g.SlidingLayers[^1] == false && c.TieWordEmbeddings);
        AssertMatchesNaive(dir.Path, [5, 17, 300, 2, 99, 41, 41, 7, 250, 3, 3, 120]);
    }

    /// <summary>GPT-2: Conv1D [in, out] weights seen as linears, learned positions, LayerNorm, fused c_attn;
    /// with the KV cache, positions continue where the prompt ended.</summary>
    [Fact]
    public void Gpt2MatchesNaiveReferenceAndDecodesWithItsPositions()
    {
        using var dir = new TempDir();
        SyntheticModel.Write(dir.Path, SyntheticFamilies.Spec("gpt2") with { VocabSize = 320 });
        var c = ModelConfig.Load(dir.Path);
        Assert.True(c.ModelType == "gpt2" && c.IntermediateSize == 256 && c.HeadDim == 16);
        long[] ids = [5, 17, 300, 2, 99, 41, 41, 7, 250];
        AssertMatchesNaive(dir.Path, ids);
        using var model = ModelLoader.Load(dir.Path);
        using var whole = model.Forward(tensor(ids, [1, ids.Length]));
        using var cache = model.CreateCache(1, 16);
        using var prompt = model.Forward(tensor(ids[..5], [1, 5]), cache);
        using var rest = model.Forward(tensor(ids[5..], [1, 4]), cache);
        Assert.True((rest[0] - whole[0, TensorIndex.Slice(5)]).abs().max().item<float>() < 1e-4);
    }

    [Fact]
    public void MistralSlidingWindowMatchesNaiveReference()
    {
        using var dir = new TempDir();
        SyntheticModel.Write(dir.Path, new SyntheticModel.Spec { ModelType = "mistral", HiddenSize = 32, Heads = 4, KvHeads = 1, Layers = 1, VocabSize = 64 });
        // Rewrite the config with a window shorter than the sequence.
        string cfg = File.ReadAllText(dir.File("config.json")).Replace("\"model_type\": \"mistral\"", "\"model_type\": \"mistral\", \"sliding_window\": 3");
        File.WriteAllText(dir.File("config.json"), cfg);
        Assert.Equal(3, ModelConfig.Load(dir.Path).SlidingWindow);
        AssertMatchesNaive(dir.Path, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    [Fact]
    public void Bf16ShardedCheckpointLoadsAndEvaluates()
    {
        using var dir = new TempDir();
        SyntheticModel.Write(dir.Path, new SyntheticModel.Spec
        {
            ModelType = "qwen2", HiddenSize = 32, Heads = 4, KvHeads = 2, Layers = 2, VocabSize = 300,
            TieWordEmbeddings = false, DType = ScalarType.BFloat16, Shards = 3, TokenizerText = SampleText, MaxPositions = 64,
        });
        Assert.True(File.Exists(dir.File("model.safetensors.index.json")));
        var tok = HfTokenizer.Load(dir.Path);
        using var model = ModelLoader.Load(dir.Path);
        var r = Perplexity.Windows(model, tok.Encode(SampleText), 64, maxWindows: 4);
        Assert.Equal(4, r.Windows);
        // Random weights: close to uniform over the vocabulary, and finite.
        Assert.InRange(r.Perplexity, 200, 400);
        AssertMatchesNaive(dir.Path, [3, 1, 4, 1, 5, 9, 2, 6]);
    }
}
