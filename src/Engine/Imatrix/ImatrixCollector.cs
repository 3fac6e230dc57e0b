using DotQuant.Engine.Calibration;
using DotQuant.Runtime;
using DotQuant.Engine.Gguf;
using DotQuant.Engine.Models;
using DotQuant.Engine.Torch;
using static TorchSharp.torch;

namespace DotQuant.Engine.Imatrix;

/// <summary>Collects an importance matrix as llama-imatrix does (tools/imatrix/imatrix.cpp): the text
/// tokenized whole (with BOS when the vocabulary adds one), cut into chunks of <c>n_ctx</c> tokens whose
/// first token becomes BOS, every chunk run through the float model, and for every weight matrix of the
/// blocks (and the head with <c>processOutput</c>) Σ_t x_{t,j}² of its input and the token count. The
/// forward runs block by block over every chunk (one block in memory), sums are fp64 and stored as fp32,
/// so the file equals llama-imatrix's within fp32 summation order.</summary>
public static class ImatrixCollector
{
    /// <summary>llama-imatrix's chunks: <paramref name="chunks"/> (all when ≤ 0) windows of
    /// <paramref name="chunkSize"/> of <paramref name="ids"/>, the first token of each replaced by BOS.</summary>
    public static IReadOnlyList<long[]> Chunks(int[] ids, int chunkSize, int chunks, int? bos)
    {
        if (chunkSize < 16) throw new DotQuantException(ErrorCodes.Usage, $"a context of {chunkSize} tokens: llama-imatrix ignores matrix products under 16 rows");
        if (ids.Length < 2 * chunkSize)
            throw new DotQuantException(ErrorCodes.CalibrationData, $"the data gives {ids.Length} tokens; at least {2 * chunkSize} are needed for a context of {chunkSize} (as llama-imatrix requires)");
        int available = ids.Length / chunkSize;
        int n = chunks <= 0 ? available : Math.Min(chunks, available);
        var result = new List<long[]>(n);
        for (int c = 0; c < n; c++)
        {
            var chunk = ids.AsSpan(c * chunkSize, chunkSize).ToArray().Select(i => (long)i).ToArray();
            if (bos is int b) chunk[0] = b;
            result.Add(chunk);
        }
        return result;
    }

    /// <param name="processOutput">Also collect the head's input (llama-imatrix --process-output; only an
    /// untied head has a tensor of its own, output.weight).</param>
    public static ImportanceMatrix Collect(DecoderModel model, IReadOnlyList<long[]> chunks, int chunkSize,
        IReadOnlyList<string> datasets, bool processOutput = false, Action<int, int>? progress = null, CancellationToken ct = default)
    {
        var ggufNames = GgufArchitectures.Tensors(model.Config, model.Weights.Contains).ToDictionary(m => m.Source, m => m.Name, StringComparer.Ordinal);
        var sums = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var counts = new Dictionary<string, long>(StringComparer.Ordinal);
        try
        {
            using var stream = ActivationStream.Embed(model, chunks);
            using var contexts = new ForwardContexts(model);
            for (int b = 0; b < model.BlockCount; b++)
            {
                ct.ThrowIfCancellationRequested();
                using var lease = model.Block(b);
                var block = lease.Block;
                for (int i = 0; i < stream.Count; i++)
                {
                    ct.ThrowIfCancellationRequested();
                    using var scope = NewDisposeScope();
                    using var x = stream.Input(i);
                    Tensor? lastInput = null, lastSum = null;
                    var output = block.Forward(x, contexts.For(x.shape[1]), (lin, input) =>
                    {
                        // A group's linears share one input tensor: square and sum it once.
                        if (!ReferenceEquals(input, lastInput))
                        {
                            lastInput = input;
                            lastSum = SumOfSquares(input);
                        }
                        Add(GgufName(ggufNames, lin.Name + ".weight"), lastSum!, input.NumberOfElements / input.shape[^1]);
                    });
                    stream.Replace(i, output);
                }
                progress?.Invoke(b + 1, model.BlockCount);
            }
            if (processOutput && ggufNames.TryGetValue(model.HeadName, out var head) && head == "output.weight")
            {
                for (int i = 0; i < stream.Count; i++)
                {
                    using var scope = NewDisposeScope();
                    using var x = stream.Input(i);
                    var normed = model.FinalNorm(x);
                    Add(head, SumOfSquares(normed), normed.NumberOfElements / normed.shape[^1]);
                }
            }
            var entries = new Dictionary<string, ImportanceMatrix.Entry>(StringComparer.Ordinal);
            foreach (var (name, sum) in sums)
            {
                using var f = sum.to(ScalarType.Float32);
                if (!f.isfinite().all().item<bool>())
                    throw new DotQuantException(ErrorCodes.NonFinite, $"the sums of squared inputs of {name} are not finite (the model overflows on this text)");
                entries[name] = new ImportanceMatrix.Entry(f.data<float>().ToArray(), [counts[name]]);
            }
            return new ImportanceMatrix(entries, chunks.Count, chunkSize, datasets);
        }
        finally
        {
            foreach (var t in sums.Values) t.Dispose();
        }

        void Add(string name, Tensor sum, long tokens)
        {
            if (sums.TryGetValue(name, out var total)) total.add_(sum, Scalars.One);
            else sums[name] = sum.clone().DetachFromDisposeScope();
            counts[name] = counts.GetValueOrDefault(name) + tokens;
        }
    }

    /// <summary>Σ over every token row of x² per input column, in fp64.</summary>
    static Tensor SumOfSquares(Tensor input)
    {
        var x = input.reshape(-1, input.shape[^1]).to(ScalarType.Float64);
        return x.mul(x).sum(dim: 0L);
    }

    static string GgufName(IReadOnlyDictionary<string, string> names, string source) =>
        names.TryGetValue(source, out var name) ? name
        : throw new DotQuantException(ErrorCodes.GgufUnsupported, $"{source} has no tensor in llama.cpp's layout, so no imatrix entry can name it");
}
