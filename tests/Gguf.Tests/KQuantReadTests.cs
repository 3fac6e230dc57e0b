using DotQuant.Engine.Evaluation;
using DotQuant.Engine.Gguf;
using DotQuant.Engine.Gguf.Blocks;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;
using DotQuant.Tests;
using LLama.Native;

namespace DotQuant.Gguf.Tests;

/// <summary>llama.cpp's k-quant files read back: every decoded matrix is close to the float original
/// (a wrong layout decodes to noise), and `eval` scores the file as llama.cpp's forward does.</summary>
public class KQuantReadTests
{
    static string LlamaTiny => Path.Combine(SharedPaths.Root, "models", "llama-tiny");

    /// <summary>The mixes cover every k-quant type: Q2_K and Q3_K_M (with Q4_K/Q5_K tensors), Q4_K_M,
    /// Q5_K_M, and Q6_K for the output head in each.</summary>
    [Theory]
    [InlineData(LLamaFtype.MOSTLY_Q2_K, 0.45)]
    [InlineData(LLamaFtype.MOSTLY_Q3_K_M, 0.25)]
    [InlineData(LLamaFtype.MOSTLY_Q4_K_M, 0.12)]
    [InlineData(LLamaFtype.MOSTLY_Q5_K_M, 0.06)]
    public void LlamaCppKQuantFilesDecodeAndScoreAsLlamaCppRunsThem(LLamaFtype ftype, double maxRelativeError)
    {
        using var dir = new TempDir();
        GgufFloatExport.Write(LlamaTiny, dir.File("f32.gguf"), GgmlType.F32);
        LlamaCpp.Quantize(dir.File("f32.gguf"), dir.File("q.gguf"), ftype);

        using (var f32 = GgufFile.Open(dir.File("f32.gguf")))
        using (var q = GgufFile.Open(dir.File("q.gguf")))
        {
            foreach (var t in q.Tensors.Where(t => t.Dims.Length == 2))
            {
                var original = f32.Decode(f32.Tensor(t.Name)!);
                var decoded = q.Decode(t);
                double err = 0, norm = 0;
                for (int i = 0; i < decoded.Length; i++) { err += Math.Pow(decoded[i] - original[i], 2); norm += original[i] * (double)original[i]; }
                double relative = Math.Sqrt(err / norm);
                Assert.True(relative < maxRelativeError, $"{t.Name} ({t.Type}): relative error {relative:F3}");
            }
        }

        // llama.cpp's own decoder: requantizing the file to F32 dequantizes every tensor with
        // ggml's to_float; our codecs must give the same floats, bit for bit.
        LlamaCpp.Quantize(dir.File("q.gguf"), dir.File("back.gguf"), LLamaFtype.ALL_F32, allowRequantize: true);
        using (var q = GgufFile.Open(dir.File("q.gguf")))
        using (var back = GgufFile.Open(dir.File("back.gguf")))
            foreach (var t in q.Tensors.Where(t => t.Type != GgmlType.F32))
            {
                var decoded = q.Decode(t);
                var f = back.Tensor(t.Name)!;
                Assert.Equal(GgmlType.F32, f.Type);
                var llama = back.Decode(f);
                int first = Enumerable.Range(0, decoded.Length).FirstOrDefault(i => BitConverter.SingleToInt32Bits(decoded[i]) != BitConverter.SingleToInt32Bits(llama[i]), -1);
                Assert.True(first < 0, $"{t.Name} ({t.Type}): element {first} decodes to {(first < 0 ? 0 : decoded[first])}, llama.cpp {(first < 0 ? 0 : llama[first])}");
            }

        var ids = HfTokenizer.Load(LlamaTiny).Encode(File.ReadAllText(SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt"))[..40_000]);
        const int length = 512, windows = 4;
        using var model = ModelLoader.Open(dir.File("q.gguf"));
        var ours = Perplexity.Windows(model, ids, length, windows);
        double theirs = LlamaCpp.Perplexity(dir.File("q.gguf"), ids, length, windows);
        Assert.True(Math.Abs(ours.Perplexity / theirs - 1) < 1e-3, $"{ftype}: eval {ours.Perplexity:F4} vs llama.cpp {theirs:F4}");
    }
}
