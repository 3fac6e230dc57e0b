using System.Diagnostics;
using DotQuant.Runtime;
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
        Action<int, int>? progress = null, long activationBudget = LayerMajor.DefaultActivationBudget, CancellationToken ct = default)
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
        var batches = new List<Tensor>();
        try
        {
            for (int first = 0; first < windows; first += batch)
            {
                int n = Math.Min(batch, windows - first);
                batches.Add(tensor(ids.AsSpan(first * sequenceLength, n * sequenceLength).ToArray().Select(i => (long)i).ToArray(), [n, sequenceLength]).DetachFromDisposeScope());
            }
            var nll = new double[batches.Count];
            int done = 0;
            LayerMajor.Run(model, batches, (i, hidden, head) =>
            {
                nll[i] = Nll(model, batches[i], hidden, head);
                done += (int)batches[i].shape[0];
                progress?.Invoke(done, windows);
            }, activationBudget, ct);
            long predicted = (long)windows * (sequenceLength - 1);
            return Result(InOrder(nll), predicted, ids.Length, windows, sw.Elapsed.TotalSeconds);
        }
        finally
        {
            foreach (var b in batches) b.Dispose();
        }
    }

    /// <summary>Document protocol: each document scored on its own (typically BOS + tokens),
    /// truncated at <paramref name="sequenceLength"/>; mean NLL over all predicted tokens.</summary>
    public static PerplexityResult Documents(DecoderModel model, IReadOnlyList<int[]> documents, int sequenceLength,
        long activationBudget = LayerMajor.DefaultActivationBudget, CancellationToken ct = default)
    {
        var sw = Stopwatch.StartNew();
        var batches = new List<Tensor>();
        try
        {
            long predicted = 0, tokens = 0;
            foreach (var doc in documents)
            {
                int len = Math.Min(doc.Length, sequenceLength);
                if (len < 2) continue;
                batches.Add(tensor(doc.Take(len).Select(i => (long)i).ToArray(), [1, len]).DetachFromDisposeScope());
                predicted += len - 1;
                tokens += len;
            }
            if (batches.Count == 0) throw new DotQuantException(ErrorCodes.EvalData, "no document has two or more tokens");
            var nll = new double[batches.Count];
            LayerMajor.Run(model, batches, (i, hidden, head) => nll[i] = Nll(model, batches[i], hidden, head), activationBudget, ct);
            return Result(InOrder(nll), predicted, tokens, batches.Count, sw.Elapsed.TotalSeconds);
        }
        finally
        {
            foreach (var b in batches) b.Dispose();
        }
    }

    /// <summary>Left-to-right sum (the order every earlier figure was summed in).</summary>
    static double InOrder(double[] values)
    {
        double total = 0;
        foreach (var v in values) total += v;
        return total;
    }

    static PerplexityResult Result(double nll, long predicted, long tokens, int windows, double seconds)
    {
        double mean = nll / predicted;
        if (!double.IsFinite(mean))
            throw new DotQuantException(ErrorCodes.NonFinite, "the model produced a non-finite loss (NaN or Inf in the weights or activations)");
        return new PerplexityResult(Math.Exp(mean), mean, tokens, windows, predicted, seconds);
    }

    /// <summary>Sum of −log p(x_t | x_&lt;t) over t ≥ 1 for ids [B, T], from the final-normalised hidden
    /// states. Logits are formed a slice of positions at a time so a large vocabulary never needs a
    /// [B, T, V] tensor.</summary>
    static double Nll(DecoderModel model, Tensor ids, Tensor h, Tensor head)
    {
        using var scope = NewDisposeScope();
        long t = ids.shape[1];
        var hidden = h.narrow(1, 0, t - 1).reshape(-1, h.shape[2]);
        var targets = ids.narrow(1, 1, t - 1).reshape(-1);
        long rows = hidden.shape[0];
        long chunk = Math.Max(1, (1L << 25) / model.Config.VocabSize);   // ~128 MB of fp32 logits
        double total = 0;
        for (long r = 0; r < rows; r += chunk)
        {
            using var inner = NewDisposeScope();
            long n = Math.Min(chunk, rows - r);
            var logits = model.Logits(hidden.narrow(0, r, n), head);
            var logp = logits.log_softmax(-1);
            var picked = logp.gather(1, targets.narrow(0, r, n).unsqueeze(1));
            total -= picked.sum(type: ScalarType.Float64).item<double>();
        }
        return total;
    }
}
