using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Engine.Runtime;

/// <summary>Greedy decoding with the KV cache: one forward over the prompt, then one token at a time.</summary>
public static class TextGenerator
{
    public static int[] Greedy(DecoderModel model, IReadOnlyList<int> prompt, int maxNewTokens, int? stopToken = null)
    {
        if (prompt.Count == 0) throw new ArgumentException("the prompt needs at least one token (e.g. BOS)", nameof(prompt));
        long capacity = Math.Min(model.Config.MaxPositionEmbeddings, prompt.Count + maxNewTokens);
        using var cache = model.CreateCache(1, capacity);
        var output = new List<int>();
        var next = prompt.Select(i => (long)i).ToArray();
        while (output.Count < maxNewTokens && cache.Length + next.Length <= capacity)
        {
            using var scope = NewDisposeScope();
            var ids = tensor(next, [1, next.Length]);
            var logits = model.Forward(ids, cache);
            int token = (int)logits[0, -1].argmax().item<long>();
            output.Add(token);
            if (token == stopToken) break;
            next = [token];
        }
        return output.ToArray();
    }
}
