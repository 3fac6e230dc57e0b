using DotQuant.Engine.Evaluation;
using DotQuant.Engine.Gguf;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;
using DotQuant.Tests;
using LLama.Native;
using static TorchSharp.torch;

namespace DotQuant.Gguf.Tests;

/// <summary>`eval` of GGUF files: ours and llama.cpp's, scored with our protocol and compared with
/// llama.cpp's own forward over the same windows.</summary>
public class GgufEvalTests
{
    static string LlamaTiny => Path.Combine(SharedPaths.Root, "models", "llama-tiny");

    [Fact]
    public void OurFloatFileEvaluatesExactlyAsTheCheckpoint()
    {
        using var dir = new TempDir();
        GgufFloatExport.Write(LlamaTiny, dir.File("m.gguf"), GgmlType.F32);
        using var hf = ModelLoader.Open(LlamaTiny);
        using var gguf = ModelLoader.Open(dir.File("m.gguf"));
        Assert.Equal(hf.Config with { TorchDtype = null, BosTokenId = null, EosTokenIds = [] }, gguf.Config with { BosTokenId = null, EosTokenIds = [] });
        using var ids = tensor(new long[] { 1, 403, 407, 261, 378, 99, 12 }, [1, 7]);
        using var a = hf.Forward(ids);
        using var b = gguf.Forward(ids);
        Assert.Equal(a.data<float>().ToArray(), b.data<float>().ToArray());
    }

    /// <summary>llama.cpp quantizes to Q4_0 (its file, not ours); our evaluation of that file and
    /// llama.cpp's own forward give the same perplexity over the same windows.</summary>
    [Fact]
    public void ALlamaCppQuantizationScoresTheSameInBothImplementations()
    {
        using var dir = new TempDir();
        GgufFloatExport.Write(LlamaTiny, dir.File("f32.gguf"), GgmlType.F32);
        LlamaCpp.Quantize(dir.File("f32.gguf"), dir.File("q4_0.gguf"), LLamaFtype.MOSTLY_Q4_0);

        var tokenizer = HfTokenizer.Load(LlamaTiny);
        var ids = tokenizer.Encode(File.ReadAllText(SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt"))[..40_000]);
        const int length = 512, windows = 4;
        using var model = ModelLoader.Open(dir.File("q4_0.gguf"));
        var ours = Perplexity.Windows(model, ids, length, windows);

        double theirs = LlamaCpp.Perplexity(dir.File("q4_0.gguf"), ids, length, windows);
        Assert.True(Math.Abs(ours.Perplexity / theirs - 1) < 1e-3, $"eval {ours.Perplexity:F4} vs llama.cpp {theirs:F4}");
    }
}
