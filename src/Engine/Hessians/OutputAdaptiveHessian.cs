using DotQuant.Engine.Calibration;
using DotQuant.Engine.Diagnostics;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
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
/// Sequences run one at a time (per-sample gradients), only the requested linears' weights require
/// gradients (as fp32 leaves), G is read from W.grad and folded into an fp32 accumulator, so no
/// per-sample gradient is ever kept. Rows are aggregated (the m row Hessians averaged), which keeps
/// the per-sequence token coupling X_s Δ_sᵀΔ_s X_sᵀ — unlike a K-FAC factorisation.
///
/// The backward runs block by block so that only one block's weights are ever in memory: a forward
/// sweep keeps every block's input per sequence (spilled to the scratch folder when large), the head
/// gives each sequence's ∂CE/∂x at the last block, and a backward sweep recomputes each block with
/// gradients from its saved input and carries ∂CE/∂x one block down — the same operations a
/// whole-graph backward performs, one block resident.</summary>
public static class OutputAdaptiveHessian
{
    /// <summary>Saved block inputs above this many bytes go to disk.</summary>
    public const long InMemoryActivations = 256L << 20;

    /// <param name="from">First block to run; <paramref name="stream"/> holds its inputs.</param>
    /// <param name="working">Block <paramref name="from"/> as the caller holds it (partially solved),
    /// or null to load it from the model.</param>
    /// <param name="targets">Names of the linears whose H̄ is wanted (in blocks ≥ <paramref name="from"/>).</param>
    public static Dictionary<string, Tensor> Compute(DecoderModel model, int from, DecoderBlock? working, ActivationStream stream,
        IReadOnlySet<string> targets, OacOptions o, ForwardContexts contexts, string? scratch, CancellationToken ct = default)
    {
        var layout = Enumerable.Range(from, model.BlockCount - from).ToDictionary(b => b, b => model.LinearLayout(b).SelectMany(g => g).ToList());
        var sums = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (_, linears) in layout)
            foreach (var l in linears.Where(l => targets.Contains(l.Name)))
                sums[l.Name] = zeros(l.InFeatures, l.InFeatures).DetachFromDisposeScope();
        var sequences = new List<(int Batch, int Row)>();
        for (int i = 0; i < stream.Count; i++)
            for (int s = 0; s < stream.Ids[i].Length; s++) sequences.Add((i, s));

        long perBlock = sequences.Sum(q => (long)stream.Ids[q.Batch][q.Row].Length) * model.Config.HiddenSize * 4;
        using var saved = new BlockInputs(perBlock * (model.BlockCount - from) > InMemoryActivations ? scratch : null);
        // Blocks below the lowest one with a target only carry the forward.
        int lowest = layout.Where(kv => kv.Value.Any(l => targets.Contains(l.Name))).Select(kv => kv.Key).DefaultIfEmpty(model.BlockCount).Min();
        var x = new Tensor?[sequences.Count];
        var g = new Tensor?[sequences.Count];
        try
        {
            using var enable = enable_grad();
            // Forward sweep: each block's input per sequence, as the whole-graph forward computes it.
            for (int q = 0; q < sequences.Count; q++)
            {
                using var input = stream.Input(sequences[q].Batch);
                x[q] = input.narrow(0, sequences[q].Row, 1).detach().clone().DetachFromDisposeScope();
            }
            for (int b = from; b < model.BlockCount; b++)
            {
                using var lease = b == from && working is not null ? new BlockLease(working, false) : new BlockLease(model.LoadBlock(b), true);
                using var leaves = new Leaves(lease.Block, targets);
                if (b >= lowest) saved.Put(b, x);
                for (int q = 0; q < x.Length; q++)
                {
                    ct.ThrowIfCancellationRequested();
                    using var scope = NewDisposeScope();
                    var input = b > from ? x[q]!.detach().requires_grad_(true) : x[q]!;
                    var next = lease.Block.Forward(input, contexts.For(input.shape[1])).detach().DetachFromDisposeScope();
                    x[q]!.Dispose();        // saved keeps its own handle (or a copy on disk)
                    x[q] = next;
                }
            }

            // The loss of each sequence and its gradient at the last block's output.
            using (var head = model.HeadWeight())
            {
                for (int q = 0; q < x.Length; q++)
                {
                    ct.ThrowIfCancellationRequested();
                    using var scope = NewDisposeScope();
                    var (i, s) = sequences[q];
                    var last = x[q]!.detach().requires_grad_(true);
                    long t = last.shape[1];
                    var logits = model.Logits(model.FinalNorm(last), head).squeeze(0);          // [T, V]
                    var predicted = logits.narrow(0, 0, t - 1);
                    Tensor labels;
                    if (o.Labels == FisherLabels.Empirical)
                        labels = tensor(stream.Ids[i][s].Skip(1).ToArray());
                    else
                    {
                        using var gen = new Generator((ulong)(o.Seed * 1_000_003 + q));
                        using var noGrad = no_grad();
                        labels = predicted.softmax(-1).multinomial(1, true, gen).squeeze(1);
                    }
                    var loss = nn.functional.cross_entropy(predicted, labels);
                    if (!loss.isfinite().item<bool>())
                        throw new DotQuantException(ErrorCodes.NonFinite, "the calibration loss is NaN or Inf; the output-adaptive Hessian cannot be computed");
                    loss.backward();
                    g[q] = last.grad!.detach().clone().DetachFromDisposeScope();
                    x[q]!.Dispose();
                    x[q] = null;
                }
            }

            // Backward sweep: block by block, recomputed from its saved inputs, down to the lowest
            // block with a target.
            for (int b = model.BlockCount - 1; b >= lowest; b--)
            {
                using var lease = b == from && working is not null ? new BlockLease(working, false) : new BlockLease(model.LoadBlock(b), true);
                var inputs = saved.Take(b);
                using var leaves = new Leaves(lease.Block, targets);
                var mine = leaves.Linears;
                bool viaOutputGradients = o.Fisher != FisherSample.Sequence;   // token and explicit forms need X and Δ
                var observedIn = new Dictionary<NamedLinear, Tensor>();
                var observedOut = new Dictionary<NamedLinear, Tensor>();
                if (viaOutputGradients)
                    foreach (var l in mine)
                        l.OutputObserver = y => { y.retain_grad(); observedOut[l] = y.DetachFromDisposeScope(); };   // ours to dispose
                LinearInputObserver? observe = viaOutputGradients ? (lin, input) => { if (sums.ContainsKey(lin.Name)) observedIn[lin] = input.detach().DetachFromDisposeScope(); } : null;
                try
                {
                    for (int q = 0; q < inputs.Length; q++)
                    {
                        ct.ThrowIfCancellationRequested();
                        using var scope = NewDisposeScope();
                        var input = b > from ? inputs[q].detach().requires_grad_(true) : inputs[q];
                        var y = lease.Block.Forward(input, contexts.For(input.shape[1]), observe);
                        y.backward([g[q]!]);
                        foreach (var lin in mine)
                        {
                            var grad = lin.Weight.grad ?? throw new DotQuantException(ErrorCodes.Internal, $"{lin.Name} received no gradient");
                            var sum = sums[lin.Name];
                            if (viaOutputGradients)
                            {
                                var xs = observedIn[lin].reshape(-1, lin.InFeatures);
                                var delta = (observedOut[lin].grad ?? throw new DotQuantException(ErrorCodes.Internal, $"{lin.Name}: no output gradient")).reshape(-1, lin.OutFeatures);
                                sum.add_(o.Fisher == FisherSample.Token ? TokenTerm(xs, delta) : SequenceTerm(xs, delta).mul_(lin.OutFeatures));
                            }
                            else
                                Accumulate(sum, grad);
                            grad.zero_();
                        }
                        foreach (var captured in observedIn.Values) captured.Dispose();
                        foreach (var captured in observedOut.Values) captured.Dispose();
                        observedIn.Clear();
                        observedOut.Clear();
                        g[q]!.Dispose();
                        g[q] = b > lowest ? input.grad!.detach().clone().DetachFromDisposeScope() : null;
                    }
                }
                finally
                {
                    foreach (var l in mine) l.OutputObserver = null;
                    foreach (var t in inputs) t.Dispose();
                }
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
        }
        var m = layout.Values.SelectMany(l => l).ToDictionary(l => l.Name, l => l.OutFeatures);
        foreach (var (name, sum) in sums) sum.div_((double)Math.Max(1, sequences.Count) * m[name]);
        return sums;
    }

    /// <summary>The block's target linears hold fp32 leaves that require gradients while in scope;
    /// their own weights are put back afterwards.</summary>
    sealed class Leaves : IDisposable
    {
        readonly Dictionary<NamedLinear, Tensor> _originals = new();

        public Leaves(DecoderBlock block, IReadOnlySet<string> targets)
        {
            foreach (var l in block.Linears.Where(l => targets.Contains(l.Name)))
            {
                var leaf = l.Weight.to(ScalarType.Float32, copy: true).requires_grad_(true).DetachFromDisposeScope();
                _originals[l] = l.ExchangeWeight(leaf);
            }
        }

        public IReadOnlyList<NamedLinear> Linears => _originals.Keys.ToList();

        public void Dispose()
        {
            foreach (var (lin, original) in _originals)
                lin.ExchangeWeight(original).Dispose();
        }
    }

    /// <summary>Each block's inputs per sequence from the forward sweep, in memory or, above
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

    /// <summary>sum += Gᵀ G (fp32): one sequence's row-aggregated Fisher term.</summary>
    public static void Accumulate(Tensor sum, Tensor grad) => sum.addmm_(grad.t().to(sum.dtype), grad.to(sum.dtype), 1, 1);

    /// <summary>Σ_t ‖δ_t‖² x_t x_tᵀ for one sequence (X [T, n], Δ [T, m]): the token Fisher's term.</summary>
    public static Tensor TokenTerm(Tensor x, Tensor delta)
    {
        using var scope = NewDisposeScope();
        var weighted = x * delta.square().sum([1], keepdim: true);
        return scope.MoveToOuter(weighted.t().matmul(x));
    }

    /// <summary>The sequence Fisher's term from one sequence's layer inputs X_s [T, n] and output
    /// gradients Δ_s [T, m] (row = token): X_sᵀ (Δ_s Δ_sᵀ) X_s / m — the explicit form of spec §2.3
    /// (Gᵀ G / m with G = Δ_sᵀ X_s).</summary>
    public static Tensor SequenceTerm(Tensor x, Tensor delta)
    {
        using var scope = NewDisposeScope();
        var gram = delta.matmul(delta.t());                 // [T, T] token coupling
        var h = x.t().matmul(gram).matmul(x) / delta.shape[1];
        return scope.MoveToOuter(h);
    }
}
