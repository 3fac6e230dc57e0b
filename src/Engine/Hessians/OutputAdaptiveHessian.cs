using DotQuant.Engine.Diagnostics;
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
}

/// <summary>OAC's output-adaptive Hessian (spec §2.3): per linear, H̄ = 1/(N·m) Σ_s G_sᵀ G_s with
/// G_s = ∂CE_s/∂W the gradient of one calibration sequence's mean next-token cross-entropy.
/// Sequences run one at a time (per-sample gradients), only the requested linears' weights require
/// gradients (as fp32 leaves), G is read from W.grad and folded into an fp32 accumulator, so no
/// per-sample gradient is ever kept. Rows are aggregated (the m row Hessians averaged), which keeps
/// the per-sequence token coupling X_s Δ_sᵀΔ_s X_sᵀ — unlike a K-FAC factorisation.</summary>
public static class OutputAdaptiveHessian
{
    /// <param name="from">First block to run; <paramref name="hidden"/> are its inputs, batched.</param>
    /// <param name="ids">Token ids of each batch (labels).</param>
    /// <param name="targets">The linears whose H̄ is wanted (in blocks ≥ <paramref name="from"/>).</param>
    public static Dictionary<NamedLinear, Tensor> Compute(DecoderModel model, int from, IReadOnlyList<Tensor> hidden, IReadOnlyList<long[][]> ids,
        IReadOnlyCollection<NamedLinear> targets, OacOptions o, Func<long, ForwardContext> context, CancellationToken ct = default)
    {
        var sums = targets.ToDictionary(l => l, l => zeros(l.InFeatures, l.InFeatures).DetachFromDisposeScope());
        var leaves = new Dictionary<NamedLinear, Tensor>();
        foreach (var l in targets)
        {
            var leaf = l.Weight.to(ScalarType.Float32, copy: true).requires_grad_(true).DetachFromDisposeScope();
            leaves[l] = l.ExchangeWeight(leaf);     // keeps the original to put back
        }
        int sequences = 0;
        // Inputs and outputs of the target linears, for the token Fisher and the explicit-form check.
        var inputs = new Dictionary<NamedLinear, Tensor>();
        var outputs = new Dictionary<NamedLinear, Tensor>();
        bool viaOutputGradients = o.Fisher != FisherSample.Sequence;   // token and explicit forms need X and Δ
        if (viaOutputGradients)
            foreach (var l in targets)
                l.OutputObserver = y => { y.retain_grad(); outputs[l] = y.DetachFromDisposeScope(); };   // ours to dispose
        LinearInputObserver? observe = viaOutputGradients ? (lin, x) => { if (sums.ContainsKey(lin)) inputs[lin] = x.detach().DetachFromDisposeScope(); } : null;
        try
        {
            using var enable = enable_grad();
            for (int i = 0; i < hidden.Count; i++)
            {
                for (int s = 0; s < hidden[i].shape[0]; s++)
                {
                    ct.ThrowIfCancellationRequested();
                    using var scope = NewDisposeScope();
                    var x = hidden[i].narrow(0, s, 1).detach();
                    long t = x.shape[1];
                    var ctx = context(t);
                    for (int b = from; b < model.BlockCount; b++)
                        x = model.ForwardBlock(b, x, ctx, observe);
                    x = model.FinalNorm(x);
                    using var head = model.HeadWeight();
                    var logits = nn.functional.linear(x, head).squeeze(0);          // [T, V]
                    var predicted = logits.narrow(0, 0, t - 1);
                    Tensor labels;
                    if (o.Labels == FisherLabels.Empirical)
                        labels = tensor(ids[i][s].Skip(1).ToArray());
                    else
                    {
                        using var g = new Generator((ulong)(o.Seed * 1_000_003 + sequences));
                        using var noGrad = no_grad();
                        labels = predicted.softmax(-1).multinomial(1, true, g).squeeze(1);
                    }
                    var loss = nn.functional.cross_entropy(predicted, labels);
                    if (!loss.isfinite().item<bool>())
                        throw new DotQuantException(ErrorCodes.NonFinite, "the calibration loss is NaN or Inf; the output-adaptive Hessian cannot be computed");
                    loss.backward();
                    foreach (var (lin, sum) in sums)
                    {
                        var grad = lin.Weight.grad ?? throw new DotQuantException(ErrorCodes.Internal, $"{lin.Name} received no gradient");
                        if (viaOutputGradients)
                        {
                            var xs = inputs[lin].reshape(-1, lin.InFeatures);
                            var delta = (outputs[lin].grad ?? throw new DotQuantException(ErrorCodes.Internal, $"{lin.Name}: no output gradient")).reshape(-1, lin.OutFeatures);
                            sum.add_(o.Fisher == FisherSample.Token ? TokenTerm(xs, delta) : SequenceTerm(xs, delta).mul_(lin.OutFeatures));
                        }
                        else
                            Accumulate(sum, grad);
                        grad.zero_();
                    }
                    foreach (var captured in inputs.Values) captured.Dispose();
                    foreach (var captured in outputs.Values) captured.Dispose();
                    inputs.Clear();
                    outputs.Clear();
                    sequences++;
                }
            }
        }
        finally
        {
            foreach (var l in targets) l.OutputObserver = null;
            foreach (var (lin, original) in leaves)
                lin.ExchangeWeight(original).Dispose();
        }
        foreach (var (lin, sum) in sums) sum.div_((double)Math.Max(1, sequences) * lin.OutFeatures);
        return sums;
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
