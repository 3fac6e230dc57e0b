using DotQuant.Engine.Evaluation;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using DotQuant.Engine.Runtime;
using DotQuant.Engine.Tokenization;
using DotQuant.Tests;
using static TorchSharp.torch;

namespace DotQuant.Engine.Tests;

/// <summary>llama-tiny (hidden 256, 6 layers, GQA 4/2, untied head; trained here) against the check
/// numbers its README gives from an independent functional forward.</summary>
public class LlamaTinyTests
{
    static string Dir => Path.Combine(SharedPaths.Root, "models", "llama-tiny");

    [Fact]
    public void LogitsAndFirstWindowMatchTheReference()
    {
        using var model = ModelLoader.Open(Dir);
        using var ids = tensor(new long[] { 1, 403, 407, 261, 378 }, [1, 5]);
        using var logits = model.Forward(ids);
        var last = logits[0, -1].data<float>().ToArray();
        var expected = new[] { -0.98182f, -6.11606f, -1.97182f, -9.74694f, -9.81443f, -9.90605f, -9.74233f, -9.82872f };
        for (int i = 0; i < expected.Length; i++) Assert.True(Math.Abs(last[i] - expected[i]) < 2e-4, $"logit {i}: {last[i]} vs {expected[i]}");
        var top = last.Select((v, i) => (v, i)).OrderByDescending(p => p.v).Take(5).Select(p => p.i).ToArray();
        Assert.Equal(new[] { 267, 426, 410, 432, 261 }, top);

        var tok = HfTokenizer.Load(Dir);
        var wiki = tok.Encode(File.ReadAllText(SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt")));
        Assert.Equal(815_069, wiki.Length);
        var first = Perplexity.Windows(model, wiki, 512, 1);
        Assert.InRange(first.MeanNll, 2.890144 - 1e-4, 2.890144 + 1e-4);
    }
}

/// <summary>The float path on the shared pretrained model against its published reference numbers.</summary>
public class Stories260KTests
{
    [Fact]
    public void WikiTextPerplexityMatchesReference()
    {
        var tok = HfTokenizer.Load(SharedPaths.Stories260K);
        using var model = ModelLoader.Load(SharedPaths.Stories260K);
        var ids = tok.Encode(File.ReadAllText(SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt")));
        var r = Perplexity.Windows(model, ids, 512);
        Assert.Equal(815_069, r.Tokens);
        Assert.Equal(1_591, r.Windows);
        Assert.Equal(813_001, r.PredictedTokens);
        Assert.InRange(r.Perplexity, 122.31, 122.41);
        Assert.InRange(r.MeanNll, 4.8065, 4.8075);
    }

    [Fact]
    public void TinyStoriesPerplexityMatchesReference()
    {
        var tok = HfTokenizer.Load(SharedPaths.Stories260K);
        using var model = ModelLoader.Load(SharedPaths.Stories260K);
        var docs = File.ReadAllText(SharedPaths.Data("tinystories", "valid-excerpt.txt"))
            .Split("<|endoftext|>", StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
            .Select(s => tok.Encode(s, addBos: true)).ToList();
        var r = Perplexity.Documents(model, docs, 512);
        Assert.Equal(14_433, r.PredictedTokens);
        Assert.InRange(r.Perplexity, 3.368, 3.378);
    }

    [Fact]
    public void GreedyGenerationFromBosMatchesReference()
    {
        var tok = HfTokenizer.Load(SharedPaths.Stories260K);
        using var model = ModelLoader.Load(SharedPaths.Stories260K);
        var ids = TextGenerator.Greedy(model, [tok.BosTokenId!.Value], 40);
        string text = tok.Decode(ids);
        Assert.StartsWith("Once upon a time, there was a little girl named Lily. She loved to play outside in the park.", text);
    }

    [Fact]
    public void KvCacheDecodingEqualsFullForward()
    {
        using var model = ModelLoader.Load(SharedPaths.Stories260K);
        var ids = new long[] { 1, 403, 407, 261, 378, 13, 280, 295, 269, 336, 432, 313 };
        using var all = tensor(ids, [1, ids.Length]);
        using var full = model.Forward(all);
        using var cache = model.CreateCache(1, 32);
        // Prompt of 5 tokens in one call (exercises the offset causal mask), then one at a time.
        using var first = model.Forward(all.narrow(1, 0, 5), cache);
        Assert.True(first.allclose(full.narrow(1, 0, 5), rtol: 1e-4, atol: 1e-4));
        for (int t = 5; t < ids.Length; t++)
        {
            using var step = model.Forward(all.narrow(1, t, 1), cache);
            Assert.True(step.allclose(full.narrow(1, t, 1), rtol: 1e-4, atol: 1e-4), $"position {t}");
        }
        // Several tokens appended after a cached prefix.
        using var cache2 = model.CreateCache(1, 32);
        using var a = model.Forward(all.narrow(1, 0, 7), cache2);
        using var b = model.Forward(all.narrow(1, 7, 5), cache2);
        Assert.True(b.allclose(full.narrow(1, 7, 5), rtol: 1e-4, atol: 1e-4));
    }

    [Fact]
    public void BlockByBlockWithObserverEqualsWholeForward()
    {
        using var model = ModelLoader.Load(SharedPaths.Stories260K);
        using var ids = tensor(new long[] { 1, 403, 407, 261, 378, 13, 280, 295 }, [1, 8]);
        using var full = model.Forward(ids);
        var seen = new List<string>();
        using var ctx = model.CreateContext(0, 8);
        var h = model.Embed(ids);
        for (int i = 0; i < model.BlockCount; i++)
        {
            using var block = model.LoadBlock(i);
            h = block.Forward(h, ctx, (linear, input) =>
            {
                seen.Add(linear.Name);
                Assert.Equal(linear.InFeatures, input.shape[^1]);
            });
        }
        using var w = model.HeadWeight();
        using var logits = nn.functional.linear(model.FinalNorm(h), w);
        Assert.True(logits.allclose(full, rtol: 1e-5, atol: 1e-5));
        Assert.Equal(5 * 7, seen.Count);
        Assert.Equal(new[] { "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj" },
            seen.Take(7).Select(n => n.Split('.')[^1]));
        using var first = model.LoadBlock(0);
        Assert.Equal(new[] { 3, 1, 2, 1 }, first.LinearGroups.Select(g => g.Count).ToArray());
        Assert.Equal(first.LinearGroups.Select(g => g.Select(l => l.Name)), model.LinearLayout(0).Select(g => g.Select(l => l.Name)));
    }
}
