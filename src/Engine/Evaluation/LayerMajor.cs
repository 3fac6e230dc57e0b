using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Engine.Evaluation;

/// <summary>Forward passes in layer-major order: every batch of a pass goes through block b before
/// any goes through block b+1, so each block's weights are read once per pass and only one block is
/// in memory. A pass is as many consecutive batches as fit the activation budget (one pass for
/// small models; a 7B model's WikiText-2 run takes several). Per batch the operations are exactly
/// those of a whole-model forward, so the results are the same bits.</summary>
public static class LayerMajor
{
    /// <summary>fp32 hidden states held across a pass.</summary>
    public const long DefaultActivationBudget = 1L << 30;

    /// <param name="batches">Token ids [B, T] (int64) per batch.</param>
    /// <param name="consume">Called per batch, in order, with the batch index, its final-normalised
    /// hidden states [B, T, H] and the fp32 head [V, H] (both owned by the runner).</param>
    public static void Run(DecoderModel model, IReadOnlyList<Tensor> batches, Action<int, Tensor, Tensor> consume,
        long activationBudget = DefaultActivationBudget, CancellationToken ct = default)
    {
        long width = model.Config.HiddenSize * 4L;
        int first = 0;
        while (first < batches.Count)
        {
            int last = first;
            long bytes = batches[first].numel() * width;
            while (last + 1 < batches.Count && bytes + batches[last + 1].numel() * width <= activationBudget)
                bytes += batches[++last].numel() * width;
            Pass(model, batches, first, last, consume, ct);
            first = last + 1;
        }
    }

    static void Pass(DecoderModel model, IReadOnlyList<Tensor> batches, int first, int last, Action<int, Tensor, Tensor> consume, CancellationToken ct)
    {
        var contexts = new Dictionary<long, ForwardContext>();
        ForwardContext Context(long t) => contexts.TryGetValue(t, out var c) ? c : contexts[t] = model.CreateContext(0, t);
        var hidden = new Tensor?[last - first + 1];
        try
        {
            for (int i = 0; i < hidden.Length; i++)
                hidden[i] = model.Embed(batches[first + i]).DetachFromDisposeScope();
            for (int b = 0; b < model.BlockCount; b++)
            {
                using var block = model.Block(b);
                for (int i = 0; i < hidden.Length; i++)
                {
                    ct.ThrowIfCancellationRequested();
                    var next = block.Block.Forward(hidden[i]!, Context(hidden[i]!.shape[1])).DetachFromDisposeScope();
                    hidden[i]!.Dispose();
                    hidden[i] = next;
                }
            }
            using var head = model.HeadWeight();
            for (int i = 0; i < hidden.Length; i++)
            {
                using var scope = NewDisposeScope();
                var normed = model.FinalNorm(hidden[i]!);
                hidden[i]!.Dispose();
                hidden[i] = null;
                consume(first + i, normed, head);
            }
        }
        finally
        {
            foreach (var h in hidden) h?.Dispose();
            foreach (var c in contexts.Values) c.Dispose();
        }
    }
}
