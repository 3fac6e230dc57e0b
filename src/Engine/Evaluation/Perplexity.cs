using System.Diagnostics;
using DotQuant.Engine.Diagnostics;
using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Engine.Evaluation;

public sealed record PerplexityResult(double Perplexity, double MeanNll, long Tokens, int Windows, long PredictedTokens, double Seconds)
{
    public double TokensPerSecond => Seconds > 0 ? Windows == 0 ? 0 : (PredictedTokens + Windows) / Seconds : 0;
}

/// <summary>Perplexity as the quantization papers measure it.</summary>
public static class Perplexity
{
    /// <summary>GPTQ protocol: the whole text tokenized without BOS, cut into non-overlapping windows
    /// of <paramref name="sequenceLength"/> (the tail shorter than a window is dropped), mean NLL over
    /// the predicted tokens of every window, exp.</summary>
    public static PerplexityResult Windows(DecoderModel model, int[] ids, int sequenceLength, int? maxWindows = null,
        Action<int, int>? progress = null)
    {
        if (sequenceLength < 2)
            throw new DotQuantException(ErrorCodes.EvalArgument, $"sequence length must be at least 2 (got {sequenceLength})");
        if (sequenceLength > model.Config.MaxPositionEmbeddings)
            throw new DotQuantException(ErrorCodes.EvalArgument, $"sequence length {sequenceLength} exceeds the model's max_position_embeddings ({model.Config.MaxPositionEmbeddings})");
        int windows = ids.Length / sequenceLength;
        if (maxWindows is int cap) windows = Math.Min(windows, cap);
        if (windows == 0)
            throw new DotQuantException(ErrorCodes.EvalData, $"the text has {ids.Length} tokens, fewer than one window of {sequenceLength}");

        var sw = Stopwatch.StartNew();
        // Batch windows so small models do not drown in per-call overhead; ~4k tokens per call.
        int batch = Math.Max(1, Math.Min(windows, 4096 / sequenceLength));
        double nll = 0;
        long predicted = 0;
        for (int first = 0; first < windows; first += batch)
        {
            int n = Math.Min(batch, windows - first);
            using var scope = NewDisposeScope();
            var window = tensor(ids.AsSpan(first * sequenceLength, n * sequenceLength).ToArray().Select(i => (long)i).ToArray(), [n, sequenceLength]);
            nll += SequenceNll(model, window);
            predicted += (long)n * (sequenceLength - 1);
            progress?.Invoke(first + n, windows);
        }
        return Result(nll, predicted, ids.Length, windows, sw.Elapsed.TotalSeconds);
    }

    /// <summary>Document protocol: each document scored on its own (typically BOS + tokens),
    /// truncated at <paramref name="sequenceLength"/>; mean NLL over all predicted tokens.</summary>
    public static PerplexityResult Documents(DecoderModel model, IReadOnlyList<int[]> documents, int sequenceLength)
    {
        var sw = Stopwatch.StartNew();
        double nll = 0;
        long predicted = 0, tokens = 0;
        int used = 0;
        foreach (var doc in documents)
        {
            int len = Math.Min(doc.Length, sequenceLength);
            if (len < 2) continue;
            using var scope = NewDisposeScope();
            var ids = tensor(doc.Take(len).Select(i => (long)i).ToArray(), [1, len]);
            nll += SequenceNll(model, ids);
            predicted += len - 1;
            tokens += len;
            used++;
        }
        if (used == 0) throw new DotQuantException(ErrorCodes.EvalData, "no document has two or more tokens");
        return Result(nll, predicted, tokens, used, sw.Elapsed.TotalSeconds);
    }

    static PerplexityResult Result(double nll, long predicted, long tokens, int windows, double seconds)
    {
        double mean = nll / predicted;
        if (!double.IsFinite(mean))
            throw new DotQuantException(ErrorCodes.NonFinite, "the model produced a non-finite loss (NaN or Inf in the weights or activations)");
        return new PerplexityResult(Math.Exp(mean), mean, tokens, windows, predicted, seconds);
    }

    /// <summary>Sum of −log p(x_t | x_&lt;t) over t ≥ 1 for ids [B, T]. Logits are formed a slice of
    /// positions at a time so a large vocabulary never needs a [B, T, V] tensor.</summary>
    internal static double SequenceNll(DecoderModel model, Tensor ids)
    {
        using var scope = NewDisposeScope();
        long b = ids.shape[0], t = ids.shape[1];
        using var ctx = model.CreateContext(0, t);
        var h = model.Embed(ids);
        for (int i = 0; i < model.BlockCount; i++)
        {
            var next = model.ForwardBlock(i, h, ctx);
            h.Dispose();
            h = next;
        }
        h = model.FinalNorm(h);
        using var head = model.HeadWeight();
        var hidden = h.narrow(1, 0, t - 1).reshape(-1, h.shape[2]);
        var targets = ids.narrow(1, 1, t - 1).reshape(-1);
        long rows = hidden.shape[0];
        long chunk = Math.Max(1, (1L << 25) / model.Config.VocabSize);   // ~128 MB of fp32 logits
        double total = 0;
        for (long r = 0; r < rows; r += chunk)
        {
            using var inner = NewDisposeScope();
            long n = Math.Min(chunk, rows - r);
            var logits = nn.functional.linear(hidden.narrow(0, r, n), head);
            var logp = logits.log_softmax(-1);
            var picked = logp.gather(1, targets.narrow(0, r, n).unsqueeze(1));
            total -= picked.sum(type: ScalarType.Float64).item<double>();
        }
        return total;
    }
}
