using LLama;
using LLama.Common;
using LLama.Native;

namespace DotQuant.Gguf.Tests;

/// <summary>llama.cpp through LLamaSharp, the implementation we did not write. The native library
/// must be loaded by an ordinary call before LLamaQuantizer (its first native call otherwise throws
/// DllNotFoundException).</summary>
static class LlamaCpp
{
    static readonly Lazy<bool> Loaded = new(() =>
    {
        // DOTQUANT_LLAMA_LOG=FILE appends llama.cpp's own log there (why a file did not load).
        string? log = Environment.GetEnvironmentVariable("DOTQUANT_LLAMA_LOG");
        NativeLibraryConfig.All.WithLogCallback((level, message) => { if (log is { Length: > 0 }) File.AppendAllText(log, message); });
        NativeApi.llama_empty_call();
        return true;
    });

    public static void EnsureLoaded() => _ = Loaded.Value;

    public static void Quantize(string source, string destination, LLamaFtype type, bool allowRequantize = false)
    {
        EnsureLoaded();
        // quantizeOutputTensor: as llama-quantize does by default (LLamaSharp's default leaves output.weight F32).
        if (!LLamaQuantizer.Quantize(source, destination, type, nthread: 2, allowRequantize: allowRequantize, quantizeOutputTensor: true))
            throw new InvalidOperationException($"llama.cpp could not quantize {source} to {type}");
    }

    public static LLamaWeights Load(string path, out ModelParams parameters, uint context = 512)
    {
        EnsureLoaded();
        // An fp32 KV cache and plain attention: llama.cpp's defaults (fp16 cache, flash attention on the
        // CPU) round K, V and Q to fp16, which is not the model's arithmetic.
        parameters = new ModelParams(path)
        {
            ContextSize = context, BatchSize = context, UBatchSize = context, GpuLayerCount = 0, Threads = 2,
            TypeK = GGMLType.GGML_TYPE_F32, TypeV = GGMLType.GGML_TYPE_F32, FlashAttention = false,
        };
        return LLamaWeights.LoadFromFile(parameters);
    }

    /// <summary>llama.cpp's perplexity with our protocol (Perplexity.Windows): the first
    /// <paramref name="windows"/> non-overlapping windows of <paramref name="length"/> ids, no BOS,
    /// mean NLL over every predicted token, exp.</summary>
    public static double Perplexity(string path, int[] ids, int length, int windows)
    {
        using var weights = Load(path, out var parameters, (uint)length);
        double nll = 0;
        for (int w = 0; w < windows; w++)
        {
            var window = ids.AsSpan(w * length, length).ToArray();
            var logits = Logits(weights, parameters, window);
            for (int p = 0; p < length - 1; p++)
            {
                var row = logits[p];
                double max = row.Max();
                nll += Math.Log(row.Sum(v => Math.Exp(v - max))) + max - row[window[p + 1]];
            }
        }
        return Math.Exp(nll / (windows * (length - 1)));
    }

    /// <summary>Per position, the largest |ours − llama.cpp| over the vocabulary divided by the range of our
    /// logits at that position (<paramref name="ours"/> is [positions × vocab] row-major).</summary>
    public static double[] RelativeLogitDifferences(float[] ours, float[][] llama)
    {
        int vocab = llama[0].Length;
        var result = new double[llama.Length];
        for (int p = 0; p < llama.Length; p++)
        {
            var row = ours.AsSpan(p * vocab, vocab);
            float max = float.MinValue, min = float.MaxValue;
            foreach (float x in row) { max = Math.Max(max, x); min = Math.Min(min, x); }
            double range = max - min;
            for (int v = 0; v < vocab; v++) result[p] = Math.Max(result[p], Math.Abs(row[v] - llama[p][v]) / range);
        }
        return result;
    }

    /// <summary>Logits [positions][vocab] for one sequence, every position requested.</summary>
    public static float[][] Logits(LLamaWeights weights, ModelParams parameters, int[] ids)
    {
        using var context = weights.CreateContext(parameters);
        var batch = new LLamaBatch();
        for (int i = 0; i < ids.Length; i++) batch.Add((LLamaToken)ids[i], i, LLamaSeqId.Zero, true);
        var result = context.NativeHandle.Decode(batch);
        if (result != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode: {result}");
        return Enumerable.Range(0, ids.Length).Select(i => context.NativeHandle.GetLogitsIth(i).ToArray()).ToArray();
    }

    /// <summary>Greedy decoding in llama.cpp: the prompt in one batch, then one token at a time, each the
    /// argmax of its logits (no sampler, so nothing but the forward decides).</summary>
    public static int[] Greedy(string path, int[] prompt, int count)
    {
        using var weights = Load(path, out var parameters, (uint)(prompt.Length + count + 1));
        using var context = weights.CreateContext(parameters);
        var output = new List<int>();
        var batch = new LLamaBatch();
        for (int i = 0; i < prompt.Length; i++) batch.Add((LLamaToken)prompt[i], i, LLamaSeqId.Zero, i == prompt.Length - 1);
        int position = prompt.Length;
        while (true)
        {
            if (context.NativeHandle.Decode(batch) != DecodeResult.Ok) throw new InvalidOperationException("llama_decode failed");
            var logits = context.NativeHandle.GetLogitsIth(batch.TokenCount - 1);
            int best = 0;
            for (int v = 1; v < logits.Length; v++) if (logits[v] > logits[best]) best = v;
            output.Add(best);
            if (output.Count == count) return output.ToArray();
            batch.Clear();
            batch.Add((LLamaToken)best, position++, LLamaSeqId.Zero, true);
        }
    }
}
