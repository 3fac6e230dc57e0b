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
                var original = new float[t.ElementCount];
                BlockCodec.For(GgmlType.F32).Dequantize(f32.ReadAll(f32.Tensor(t.Name)!), original);
                var decoded = new float[t.ElementCount];
                var codec = BlockCodec.For(t.Type);
                var bytes = q.ReadAll(t);
                int rowBytes = (int)codec.Info.RowBytes(t.RowLength), n = (int)t.RowLength;
                for (int r = 0; r < t.Rows; r++)
                    codec.Dequantize(bytes.AsSpan(r * rowBytes, rowBytes), decoded.AsSpan(r * n, n));
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
                var decoded = new float[t.ElementCount];
                var codec = BlockCodec.For(t.Type);
                var bytes = q.ReadAll(t);
                int rowBytes = (int)codec.Info.RowBytes(t.RowLength), n = (int)t.RowLength;
                for (int r = 0; r < t.Rows; r++)
                    codec.Dequantize(bytes.AsSpan(r * rowBytes, rowBytes), decoded.AsSpan(r * n, n));
                var llama = new float[t.ElementCount];
                var f = back.Tensor(t.Name)!;
                Assert.Equal(GgmlType.F32, f.Type);
                BlockCodec.For(GgmlType.F32).Dequantize(back.ReadAll(f), llama);
                int first = Enumerable.Range(0, decoded.Length).FirstOrDefault(i => BitConverter.SingleToInt32Bits(decoded[i]) != BitConverter.SingleToInt32Bits(llama[i]), -1);
                Assert.True(first < 0, $"{t.Name} ({t.Type}): element {first} decodes to {(first < 0 ? 0 : decoded[first])}, llama.cpp {(first < 0 ? 0 : llama[first])}");
            }

        var ids = HfTokenizer.Load(LlamaTiny).Encode(File.ReadAllText(SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt"))[..40_000]);
        const int length = 512, windows = 4;
        using var model = ModelLoader.Open(dir.File("q.gguf"));
        var ours = Perplexity.Windows(model, ids, length, windows);
        using var weights = LlamaCpp.Load(dir.File("q.gguf"), out var parameters, length);
        double nll = 0;
        for (int w = 0; w < windows; w++)
        {
            var window = ids.AsSpan(w * length, length).ToArray();
            var logits = LlamaCpp.Logits(weights, parameters, window);
            for (int p = 0; p < length - 1; p++)
            {
                var row = logits[p];
                double max = row.Max();
                nll += Math.Log(row.Sum(v => Math.Exp(v - max))) + max - row[window[p + 1]];
            }
        }
        double theirs = Math.Exp(nll / (windows * (length - 1)));
        Assert.True(Math.Abs(ours.Perplexity / theirs - 1) < 1e-3, $"{ftype}: eval {ours.Perplexity:F4} vs llama.cpp {theirs:F4}");
    }
}
