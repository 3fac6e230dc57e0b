using System.Diagnostics;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;
using static TorchSharp.torch;

namespace DotQuant.Engine.Evaluation;

/// <summary>A task's score. Accuracies are fractions; standard errors are lm-evaluation-harness's
/// sample standard deviation over √n. <see cref="AccNorm"/> is set for multiple choice;
/// <see cref="Perplexity"/> (exp of minus the mean per-document log-likelihood) for LAMBADA-style tasks.</summary>
public sealed record TaskResult(string Task, int Documents, double Acc, double AccStderr, double? AccNorm, double? AccNormStderr, double? Perplexity, double Seconds);

/// <summary>Log-likelihood scoring as lm-evaluation-harness does it: each continuation is scored
/// after its context (trailing context spaces move to the continuation; the continuation's tokens
/// are those of context+continuation past the context's tokens), left-truncated to the model's
/// window, in length-sorted, right-padded batches (padding after a sequence cannot change its
/// causal logits).</summary>
public static class ZeroShot
{
    sealed record Request(int Doc, int Option, int[] Context, int[] Continuation)
    {
        public double LogLikelihood;
        public bool Greedy;
        public int Length => Context.Length + Continuation.Length - 1;
    }

    public static TaskResult Evaluate(DecoderModel model, HfTokenizer tokenizer, ZeroShotTask task, bool bos = false,
        long activationBudget = LayerMajor.DefaultActivationBudget, CancellationToken ct = default)
    {
        var sw = Stopwatch.StartNew();
        var requests = Requests(model, tokenizer, task, bos, activationBudget, ct);
        return Aggregate(task, requests, sw.Elapsed.TotalSeconds);
    }

    /// <summary>Per document and option: the continuation's log-likelihood and whether greedy decoding
    /// reproduces it (what <see cref="Evaluate"/> aggregates).</summary>
    public static (double LogLikelihood, bool Greedy)[][] LogLikelihoods(DecoderModel model, HfTokenizer tokenizer, ZeroShotTask task, bool bos = false) =>
        Requests(model, tokenizer, task, bos).GroupBy(r => r.Doc).OrderBy(g => g.Key)
            .Select(g => g.OrderBy(r => r.Option).Select(r => (r.LogLikelihood, r.Greedy)).ToArray()).ToArray();

    static List<Request> Requests(DecoderModel model, HfTokenizer tokenizer, ZeroShotTask task, bool bos,
        long activationBudget = LayerMajor.DefaultActivationBudget, CancellationToken ct = default)
    {
        var requests = new List<Request>();
        for (int d = 0; d < task.Documents.Count; d++)
        {
            var doc = task.Documents[d];
            int options = Math.Max(doc.Contexts.Count, doc.Continuations.Count);
            for (int i = 0; i < options; i++)
            {
                var (ctx, cont) = Encode(tokenizer, doc.Contexts[Math.Min(i, doc.Contexts.Count - 1)], doc.Continuations[Math.Min(i, doc.Continuations.Count - 1)], bos);
                requests.Add(new Request(d, i, ctx, cont));
            }
        }
        Score(model, requests, activationBudget, ct);
        return requests;
    }

    /// <summary>lm-evaluation-harness's _encode_pair.</summary>
    internal static (int[] Context, int[] Continuation) Encode(HfTokenizer tokenizer, string context, string continuation, bool bos)
    {
        int spaces = context.Length - context.TrimEnd().Length;
        if (spaces > 0)
        {
            continuation = context[^spaces..] + continuation;
            context = context[..^spaces];
        }
        var whole = tokenizer.Encode(context + continuation, bos);
        var ctx = tokenizer.Encode(context, bos);
        var cont = whole.Skip(ctx.Length).ToArray();
        if (cont.Length == 0) cont = tokenizer.Encode(continuation);   // a tokenizer that merged across the boundary
        if (ctx.Length == 0) ctx = [tokenizer.BosTokenId ?? 0];        // a prefix token so the first continuation token has a prediction
        return (ctx, cont);
    }

    /// <summary>Batches as the harness forms them, run layer-major (one block in memory at a time).</summary>
    static void Score(DecoderModel model, List<Request> requests, long activationBudget, CancellationToken ct)
    {
        int window = model.Config.MaxPositionEmbeddings;
        long vocab = model.Config.VocabSize;
        // Longest first (as the harness), so padding is small; ~32M logits per batch.
        var order = requests.OrderByDescending(r => Math.Min(r.Length, window)).ToList();
        var chunks = new List<(List<Request> Requests, List<int[]> Inputs)>();
        var batches = new List<Tensor>();
        try
        {
            int at = 0;
            while (at < order.Count)
            {
                int len = Math.Min(order[at].Length, window);
                int batch = (int)Math.Max(1, Math.Min(64, 32_000_000 / ((long)len * vocab)));
                var chunk = order.Skip(at).Take(batch).ToList();
                at += chunk.Count;
                var ids = new long[chunk.Count * len];
                var inputs = new List<int[]>();
                for (int b = 0; b < chunk.Count; b++)
                {
                    var full = chunk[b].Context.Concat(chunk[b].Continuation).ToArray();
                    var input = full[..^1];
                    if (input.Length > window) input = input[^window..];                 // keep the end
                    inputs.Add(input);
                    for (int t = 0; t < input.Length; t++) ids[b * len + t] = input[t];
                }
                chunks.Add((chunk, inputs));
                batches.Add(tensor(ids, [chunk.Count, len]).DetachFromDisposeScope());
            }
            using var no = no_grad();
            LayerMajor.Run(model, batches, (i, hidden, head) =>
            {
                var (chunk, inputs) = chunks[i];
                var logits = model.Logits(hidden, head);
                for (int b = 0; b < chunk.Count; b++)
                {
                    // Only the continuation's positions are scored (log-softmax is per row).
                    var r = chunk[b];
                    int n = r.Continuation.Length, start = inputs[b].Length - n;
                    var targets = tensor(r.Continuation.Select(x => (long)x).ToArray());
                    var rows = logits[b].narrow(0, start, n);
                    r.LogLikelihood = rows.log_softmax(-1).gather(1, targets.unsqueeze(1)).sum().to(ScalarType.Float64).item<double>();
                    r.Greedy = rows.argmax(-1).eq(targets).all().item<bool>();
                }
            }, activationBudget, ct);
        }
        finally
        {
            foreach (var b in batches) b.Dispose();
        }
    }

    static TaskResult Aggregate(ZeroShotTask task, List<Request> requests, double seconds)
    {
        var byDoc = requests.GroupBy(r => r.Doc).OrderBy(g => g.Key).Select(g => g.OrderBy(r => r.Option).ToList()).ToList();
        var acc = new List<double>();
        var accNorm = new List<double>();
        var ll = new List<double>();
        for (int d = 0; d < byDoc.Count; d++)
        {
            var doc = task.Documents[d];
            var rs = byDoc[d];
            if (task.Kind == TaskKind.LanguageModel)
            {
                acc.Add(rs[0].Greedy ? 1 : 0);
                ll.Add(rs[0].LogLikelihood);
                continue;
            }
            var lls = rs.Select(r => r.LogLikelihood).ToArray();
            acc.Add(ArgMax(lls) == doc.Gold ? 1 : 0);
            if (task.Kind == TaskKind.MultipleChoice)
                accNorm.Add(ArgMax(lls.Select((v, i) => v / doc.Choices[i].Length).ToArray()) == doc.Gold ? 1 : 0);
        }
        return new TaskResult(task.Name, byDoc.Count, acc.Average(), Stderr(acc),
            accNorm.Count > 0 ? accNorm.Average() : null, accNorm.Count > 0 ? Stderr(accNorm) : null,
            ll.Count > 0 ? Math.Exp(-ll.Average()) : null, seconds);
    }

    /// <summary>The first index of the maximum (numpy's argmax).</summary>
    internal static int ArgMax(double[] v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }

    /// <summary>Sample standard deviation over √n, as the harness's mean_stderr.</summary>
    internal static double Stderr(IReadOnlyList<double> x)
    {
        if (x.Count < 2) return double.NaN;
        double mean = x.Average();
        return Math.Sqrt(x.Sum(v => (v - mean) * (v - mean)) / (x.Count - 1) / x.Count);
    }
}
