using DotQuant.Engine.Calibration;
using DotQuant.Runtime;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using DotQuant.Engine.Torch;
using static TorchSharp.torch;

namespace DotQuant.Engine.Hessians;

/// <summary>Where the cross-entropy's labels come from (spec §2.3 step 1, [RECON]).</summary>
public enum FisherLabels
{
    /// <summary>The calibration text's next tokens (empirical Fisher).</summary>
    Empirical,
    /// <summary>Tokens sampled from the model's own softmax (true Fisher), seeded.</summary>
    Sampled,
}

/// <summary>When the output-adaptive Hessians are computed (spec §2.4, [RECON]).</summary>
public enum OacSchedule
{
    /// <summary>(A) per block, after the earlier blocks were quantized; backward through the later
    /// (still float) blocks. The recommended reference.</summary>
    Sequential,
    /// <summary>(A) refreshed before each true-sequential group ({q,k,v}, {o}, {gate,up}, {down}), so
    /// later groups see the quantized earlier ones; about 4× the backward passes.</summary>
    SequentialGroups,
    /// <summary>(B) one forward+backward per sequence through the float model, every layer's H̄ at
    /// once (all resident); ignores the quantization of earlier blocks.</summary>
    Once,
}

/// <summary>What one Fisher sample is (spec §2.3 step 1 vs §2.4 (C)).</summary>
public enum FisherSample
{
    /// <summary>One calibration sequence: H̄ ∝ Σ_s G_sᵀG_s = Σ_s X_s Δ_sᵀΔ_s X_sᵀ (OAC as reconstructed).</summary>
    Sequence,
    /// <summary>One token: H̄ ∝ Σ_s Σ_t ‖δ_t‖² x_t x_tᵀ, a gradient-weighted GPTQ Hessian (baseline).</summary>
    Token,
    /// <summary>The sequence Fisher computed from hooked inputs X_s and output gradients Δ_s instead of
    /// W.grad (spec §9.2.1); the same matrix, slower — a check of the autograd path.</summary>
    SequenceExplicit,
}

/// <summary>OAC's reconstructed choices, each switchable (spec §2.8).</summary>
public sealed record OacOptions
{
    public FisherSample Fisher { get; init; } = FisherSample.Sequence;
    public FisherLabels Labels { get; init; } = FisherLabels.Empirical;
    public OacSchedule Schedule { get; init; } = OacSchedule.Sequential;
    public long Seed { get; init; }

    public System.Text.Json.Nodes.JsonObject ToJson() => new()
    {
        ["fisher"] = Fisher switch { FisherSample.SequenceExplicit => "sequence_explicit", var x => x.ToString().ToLowerInvariant() },
        ["labels"] = Labels.ToString().ToLowerInvariant(),
        ["schedule"] = Schedule switch { OacSchedule.SequentialGroups => "sequential_groups", var x => x.ToString().ToLowerInvariant() },
        ["seed"] = Seed,
    };
}

/// <summary>OAC's output-adaptive Hessian (spec §2.3): per linear, H̄ = 1/(N·m) Σ_s G_sᵀ G_s with
/// G_s = ∂CE_s/∂W the gradient of one calibration sequence's mean next-token cross-entropy.
/// Sequences go through the model in chunks (up to <see cref="ChunkTokens"/> tokens): the chunk's loss
/// is the sum of its sequences' losses, so one backward gives every sequence its own output gradients
/// Δ_s (a transformer mixes no information across sequences). Each target linear's input X_s and Δ_s
/// are captured and G_s = Δ_sᵀ X_s is formed by a batched matmul, then folded into an fp64 accumulator
/// (G_sᵀ G_s over the chunk in one fp32 product; the sum rounded to fp32 once, so sums over shards of the
/// sequences add up to the whole stream's), so no per-sample gradient outlives its chunk and the
/// weights need no gradient at all. Rows are aggregated (the m row Hessians averaged), which keeps the
/// per-sequence token coupling X_s Δ_sᵀΔ_s X_sᵀ — unlike a K-FAC factorisation. (One sequence at a time
/// through autograd's W.grad gives the same H̄ to fp32 rounding: test.)
///
/// The backward runs block by block so that only one block's weights are ever in memory: a forward
/// sweep keeps every block's input per chunk (spilled to the scratch folder when large), the head
/// gives each sequence's ∂CE/∂x at the last block, and a backward sweep recomputes each block with
/// gradients from its saved input and carries ∂CE/∂x one block down — the same operations a
/// whole-graph backward performs, one block resident.</summary>
public static class OutputAdaptiveHessian
{
    /// <summary>Saved block inputs above this many bytes go to disk.</summary>
    public const long InMemoryActivations = 256L << 20;

    /// <summary>Tokens of one chunk: short sequences are batched up to this, a longer one is its own
    /// chunk (so a chunk's autograd graph is never larger than one 2048-token sequence's).</summary>
    public const long ChunkTokens = 2048;

    /// <summary>Sequences per chunk for sequences of <paramref name="length"/> tokens.</summary>
    public static int SequencesPerChunk(long length) => (int)Math.Max(1, ChunkTokens / Math.Max(1, length));

    /// <summary>Bytes of G_s kept at once while folding a chunk into H̄.</summary>
    const long GradientBytes = 256L << 20;

    /// <param name="from">First block to run; <paramref name="stream"/> holds its inputs.</param>
    /// <param name="working">Block <paramref name="from"/> as the caller holds it (partially solved),
    /// or null to load it from the model.</param>
    /// <param name="targets">Names of the linears whose H̄ is wanted (in blocks ≥ <paramref name="from"/>).</param>
    /// <param name="blockDone">Receives each block's finished H̄ (ownership included) as soon as the
    /// backward sweep leaves the block, top block first; the result is then empty. Without it every
    /// H̄ is returned at the end. Either way a block's H̄ exist only from its backward step on.</param>
    public static Dictionary<string, Tensor> Compute(DecoderModel model, int from, DecoderBlock? working, ActivationStream stream,
        IReadOnlySet<string> targets, OacOptions o, ForwardContexts contexts, string? scratch, CancellationToken ct = default,
        Action<int, Dictionary<string, Tensor>>? blockDone = null)
    {
        var outFeatures = Enumerable.Range(from, model.BlockCount - from).SelectMany(b => model.LinearLayout(b).SelectMany(g => g))
            .ToDictionary(l => l.Name, l => l.OutFeatures, StringComparer.Ordinal);
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            Sums(model, from, working, stream, targets, o, contexts, scratch, 0, (b, sums) =>
            {
                using (sums)
                {
                    var finished = sums.Tensors.Select(s => s.Name).ToList()
                        .ToDictionary(n => n, n => Scale(sums.Take(n)!, sums.Sequences, outFeatures[n]), StringComparer.Ordinal);
                    if (blockDone is not null) blockDone(b, finished);
                    else foreach (var (k, v) in finished) result[k] = v;
                }
            }, ct);
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
        return result;
    }

    /// <summary>H̄ = sum / (N·m), rounded to fp32 once; the fp64 sum is consumed.</summary>
    public static Tensor Scale(Tensor sum, int sequences, long outFeatures)
    {
        using (sum)
        {
            Scalars.Use((double)Math.Max(1, sequences) * outFeatures, s => sum.div_(s));
            return sum.to(ScalarType.Float32).DetachFromDisposeScope();
        }
    }

    /// <summary>The unscaled fp64 sums Σ_s G_sᵀG_s of every target linear in blocks ≥ <paramref name="from"/>
    /// over <paramref name="stream"/>'s sequences, handed to <paramref name="blockDone"/> per block (top block
    /// first, as the backward sweep leaves it). Each chunk's product is formed in fp32 and added into fp64,
    /// so sums over shards of the sequences (on batch boundaries) add up to the whole stream's.</summary>
    /// <param name="firstSequence">The number of the stream's first sequence in the run (a shard's offset):
    /// sampled labels are seeded per sequence.</param>
    public static void Sums(DecoderModel model, int from, DecoderBlock? working, ActivationStream stream,
        IReadOnlySet<string> targets, OacOptions o, ForwardContexts contexts, string? scratch, int firstSequence,
        Action<int, StatisticSums> blockDone, CancellationToken ct = default)
    {
        var layout = Enumerable.Range(from, model.BlockCount - from).ToDictionary(b => b, b => model.LinearLayout(b).SelectMany(g => g).ToList());
        var sums = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        // Chunks of consecutive sequences of one stream batch; First numbers the chunk's first sequence
        // over the whole stream (the sampled labels' seed).
        var chunks = new List<(int Batch, int Row, int Count, int First)>();
        int sequenceCount = 0;
        for (int i = 0; i < stream.Count; i++)
        {
            int rows = stream.Ids[i].Length, per = SequencesPerChunk(stream.Ids[i][0].Length);
            for (int s = 0; s < rows; s += per)
            {
                chunks.Add((i, s, Math.Min(per, rows - s), firstSequence + sequenceCount + s));
            }
            sequenceCount += rows;
        }

        long perBlock = stream.Ids.Sum(b => b.Sum(q => (long)q.Length)) * model.Config.HiddenSize * 4;
        using var saved = new BlockInputs(perBlock * (model.BlockCount - from) > InMemoryActivations ? scratch : null);
        // Blocks below the lowest one with a target only carry the forward.
        int lowest = layout.Where(kv => kv.Value.Any(l => targets.Contains(l.Name))).Select(kv => kv.Key).DefaultIfEmpty(model.BlockCount).Min();
        var x = new Tensor?[chunks.Count];
        var g = new Tensor?[chunks.Count];
        // Chunks' inputs, gradients and saved copies are mapped for themselves and the heap is trimmed
        // after each block of both sweeps: this phase runs for minutes with tensors of a few sizes that
        // otherwise leave the heap at its high-water mark (measured on llama-tiny: 1.04 GiB, 0.93 with).
        NativeHeap.Forward(chunks.Select(c => (long)c.Count * stream.Ids[c.Batch][c.Row].Length).DefaultIfEmpty(1).Max() * model.Config.HiddenSize * 4);
        try
        {
            using var enable = enable_grad();
            // Forward sweep: each block's input per chunk, as the whole-graph forward computes it.
            for (int c = 0; c < chunks.Count; c++)
            {
                // In a scope: the narrow and detach views would otherwise keep the whole batch alive
                // until the finalizer ran (measured: ~160 MiB above the plan on llama-tiny with OAC).
                using var scope = NewDisposeScope();
                var input = stream.Input(chunks[c].Batch);
                x[c] = input.narrow(0, chunks[c].Row, chunks[c].Count).detach().clone().DetachFromDisposeScope();
            }
            for (int b = from; b < model.BlockCount; b++)
            {
                using var lease = b == from && working is not null ? new BlockLease(working, false) : new BlockLease(model.LoadBlock(b), true);
                if (b >= lowest) saved.Put(b, x);
                using var noGrad = no_grad();
                for (int c = 0; c < x.Length; c++)
                {
                    ct.ThrowIfCancellationRequested();
                    using var scope = NewDisposeScope();
                    var next = lease.Block.Forward(x[c]!, contexts.For(x[c]!.shape[1])).DetachFromDisposeScope();
                    x[c]!.Dispose();        // saved keeps its own handle (or a copy on disk)
                    x[c] = next;
                }
                NativeHeap.PhaseEnded();
            }

            // Each sequence's loss and its gradient at the last block's output.
            using (var head = model.HeadWeight())
            {
                for (int c = 0; c < x.Length; c++)
                {
                    ct.ThrowIfCancellationRequested();
                    using var scope = NewDisposeScope();
                    var last = x[c]!.detach().requires_grad_(true);
                    Loss(model, head, last, stream, chunks[c], o).backward();
                    g[c] = last.grad!.detach().clone().DetachFromDisposeScope();
                    x[c]!.Dispose();
                    x[c] = null;
                }
            }

            // Backward sweep: block by block, recomputed from its saved inputs, down to the lowest
            // block with a target.
            for (int b = model.BlockCount - 1; b >= lowest; b--)
            {
                using var lease = b == from && working is not null ? new BlockLease(working, false) : new BlockLease(model.LoadBlock(b), true);
                var inputs = saved.Take(b);
                var mine = lease.Block.Linears.Where(l => targets.Contains(l.Name)).ToList();
                foreach (var l in mine) sums[l.Name] = zeros([l.InFeatures, l.InFeatures], ScalarType.Float64).DetachFromDisposeScope();
                var observedIn = new Dictionary<NamedLinear, Tensor>();
                var observedOut = new Dictionary<NamedLinear, Tensor>();
                foreach (var l in mine)
                    l.OutputObserver = y => { y.retain_grad(); observedOut[l] = y.DetachFromDisposeScope(); };   // ours to dispose
                LinearInputObserver? observe = mine.Count == 0 ? null : (lin, input) => { if (sums.ContainsKey(lin.Name)) observedIn[lin] = input.detach().DetachFromDisposeScope(); };
                try
                {
                    for (int c = 0; c < inputs.Length; c++)
                    {
                        ct.ThrowIfCancellationRequested();
                        using var scope = NewDisposeScope();
                        // The input requires a gradient even in the lowest block: the targets' outputs
                        // need one, and their weights take none.
                        var input = inputs[c].detach().requires_grad_(true);
                        var y = lease.Block.Forward(input, contexts.For(input.shape[1]), observe);
                        y.backward([g[c]!]);
                        foreach (var lin in mine)
                        {
                            var xs = observedIn.GetValueOrDefault(lin) ?? throw new DotQuantException(ErrorCodes.Internal, $"{lin.Name} received no input");
                            var delta = observedOut.GetValueOrDefault(lin)?.grad ?? throw new DotQuantException(ErrorCodes.Internal, $"{lin.Name}: no output gradient");
                            Fold(sums[lin.Name], xs.reshape(xs.shape[0], -1, lin.InFeatures), delta.reshape(delta.shape[0], -1, lin.OutFeatures), o.Fisher);
                        }
                        foreach (var captured in observedIn.Values) captured.Dispose();
                        foreach (var captured in observedOut.Values) captured.Dispose();
                        observedIn.Clear();
                        observedOut.Clear();
                        g[c]!.Dispose();
                        g[c] = b > lowest ? input.grad!.detach().clone().DetachFromDisposeScope() : null;
                    }
                }
                finally
                {
                    foreach (var l in mine) l.OutputObserver = null;
                    foreach (var t in inputs) t.Dispose();
                }
                var finished = new List<(string, Tensor)>();
                foreach (var l in mine)
                {
                    sums.Remove(l.Name, out var sum);
                    finished.Add((l.Name, sum!));
                }
                NativeHeap.PhaseEnded();
                blockDone(b, new StatisticSums(finished, sequenceCount));
            }
        }
        catch
        {
            foreach (var t in sums.Values) t.Dispose();
            throw;
        }
        finally
        {
            foreach (var t in x) t?.Dispose();
            foreach (var t in g) t?.Dispose();
            NativeHeap.Forward();
        }
    }

    /// <summary>Σ_s CE_s over the chunk's sequences, each CE_s the mean over its next-token predictions
    /// (empirical labels, or labels sampled from the model with a generator per sequence).</summary>
    static Tensor Loss(DecoderModel model, Tensor head, Tensor last, ActivationStream stream, (int Batch, int Row, int Count, int First) chunk, OacOptions o)
    {
        long t = last.shape[1];
        var logits = model.Logits(model.FinalNorm(last), head);                          // [c, T, V]
        var predicted = logits.narrow(1, 0, t - 1);
        Tensor labels;
        if (o.Labels == FisherLabels.Empirical)
            labels = tensor(Enumerable.Range(chunk.Row, chunk.Count).SelectMany(s => stream.Ids[chunk.Batch][s].Skip(1)).ToArray()).view(chunk.Count, t - 1);
        else
        {
            using var noGrad = no_grad();
            labels = stack(Enumerable.Range(0, chunk.Count).Select(k =>
            {
                using var gen = new Generator((ulong)(o.Seed * 1_000_003 + chunk.First + k));
                return predicted[k].softmax(-1).multinomial(1, true, gen).squeeze(1);
            }).ToArray());
        }
        var perToken = nn.functional.cross_entropy(predicted.reshape(-1, predicted.shape[^1]), labels.reshape(-1), reduction: nn.Reduction.None);
        var loss = perToken.view(chunk.Count, t - 1).mean([1]).sum();
        if (!loss.isfinite().item<bool>())
            throw new DotQuantException(ErrorCodes.NonFinite, "the calibration loss is NaN or Inf; the output-adaptive Hessian cannot be computed");
        return loss;
    }

    /// <summary>Adds a chunk's terms to H̄'s sum: X [c, T, n] and Δ [c, T, m] per sequence.</summary>
    static void Fold(Tensor sum, Tensor x, Tensor delta, FisherSample fisher)
    {
        long c = x.shape[0], n = x.shape[2], m = delta.shape[2];
        switch (fisher)
        {
            case FisherSample.Token:
                using (var term = TokenTerm(x.reshape(-1, n), delta.reshape(-1, m))) LayerStatistics.Accumulate(sum, term);
                return;
            case FisherSample.SequenceExplicit:
                for (long s = 0; s < c; s++)
                    using (var term = SequenceTerm(x[s], delta[s])) LayerStatistics.Accumulate(sum, term.mul_(Scalars.Of((double)m)));
                return;
            default:
                // G_s = Δ_sᵀ X_s for a few sequences at a time, then Σ_s G_sᵀ G_s as one product.
                long per = Math.Max(1, GradientBytes / (m * n * 4));
                for (long s0 = 0; s0 < c; s0 += per)
                {
                    using var scope = NewDisposeScope();
                    long k = Math.Min(per, c - s0);
                    Accumulate(sum, delta.narrow(0, s0, k).transpose(1, 2).bmm(x.narrow(0, s0, k)).reshape(-1, n));   // G rows: [k·m, n]
                }
                return;
        }
    }

    /// <summary>Each block's inputs per chunk from the forward sweep, in memory or, above
    /// <see cref="InMemoryActivations"/>, in one file per block in the scratch folder.</summary>
    sealed class BlockInputs(string? scratch) : IDisposable
    {
        readonly Dictionary<int, Tensor[]> _memory = new();
        readonly Dictionary<int, string> _files = new();

        /// <summary>Keeps (copies of) the inputs of block b.</summary>
        public void Put(int b, Tensor?[] inputs)
        {
            if (scratch is null)
            {
                _memory[b] = inputs.Select(t => t!.alias().DetachFromDisposeScope()).ToArray();
                return;
            }
            string file = Path.Combine(scratch, $"oac-inputs-{b}.safetensors");
            SafeTensorsWriter.Write(file, inputs.Select((t, q) => (t, q)).ToDictionary(p => $"x.{p.q:D6}", p => p.t!));
            _files[b] = file;
        }

        public Tensor[] Take(int b)
        {
            if (_memory.Remove(b, out var kept)) return kept;
            string file = _files[b];
            _files.Remove(b);
            using var f = SafeTensorsFile.Open(file);
            var result = f.Tensors.Keys.Order(StringComparer.Ordinal).Select(n => f.Load(n)).ToArray();
            File.Delete(file);
            return result;
        }

        public void Dispose()
        {
            foreach (var ts in _memory.Values) foreach (var t in ts) t.Dispose();
            foreach (var f in _files.Values) try { File.Delete(f); } catch (IOException) { }
        }
    }

    /// <summary>sum += Gᵀ G: the row-aggregated Fisher terms of the sequences whose G_s are G's rows (the
    /// product in G's dtype, added into the fp64 sum).</summary>
    public static void Accumulate(Tensor sum, Tensor grad)
    {
        using var product = grad.t().matmul(grad);
        LayerStatistics.Accumulate(sum, product);
    }

    /// <summary>Σ_t ‖δ_t‖² x_t x_tᵀ for one sequence (X [T, n], Δ [T, m]): the token Fisher's term.</summary>
    public static Tensor TokenTerm(Tensor x, Tensor delta)
    {
        using var scope = NewDisposeScope();
        var weighted = x * delta.Squared().sum([1], keepdim: true);
        return scope.MoveToOuter(weighted.t().matmul(x));
    }

    /// <summary>The sequence Fisher's term from one sequence's layer inputs X_s [T, n] and output
    /// gradients Δ_s [T, m] (row = token): X_sᵀ (Δ_s Δ_sᵀ) X_s / m — the explicit form of spec §2.3
    /// (Gᵀ G / m with G = Δ_sᵀ X_s).</summary>
    public static Tensor SequenceTerm(Tensor x, Tensor delta)
    {
        using var scope = NewDisposeScope();
        var gram = delta.matmul(delta.t());                 // [T, T] token coupling
        var h = x.t().matmul(gram).matmul(x).div(Scalars.Of(delta.shape[1]));
        return scope.MoveToOuter(h);
    }
}
