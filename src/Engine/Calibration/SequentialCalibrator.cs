using System.Diagnostics;
using DotQuant.Engine.Diagnostics;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.Models;
using DotQuant.Engine.Quantizers;
using static TorchSharp.torch;

namespace DotQuant.Engine.Calibration;

/// <summary>What happened to one linear.</summary>
/// <param name="Loss">tr(ΔW H_λ ΔWᵀ) of the solver's result on the calibration statistics.</param>
/// <param name="RtnLoss">The same objective for round-to-nearest on the same grid: how much the calibrator gained.</param>
/// <param name="PaperBits">Average bits per weight as the method's paper counts them.</param>
/// <param name="StoredBits">Every bit the native format stores for the layer, per weight.</param>
public sealed record LayerReport(string Name, int Block, long InFeatures, long OutFeatures, bool Quantized, int Bits, int GroupSize,
    double Loss, double Seconds, double Damp, double RtnLoss = double.NaN, double PaperBits = double.NaN, double StoredBits = double.NaN,
    string Kind = "grid", long Outliers = 0, long SalientColumns = 0);

/// <summary>Bits per weight of a model: each quantized layer's figures weighted by its weight count
/// (NaN when nothing was quantized). One definition for dotquant.json, the CLI and the reports.</summary>
public readonly record struct ModelBits(double Paper, double Stored, double Weights)
{
    public static ModelBits Of(IEnumerable<LayerReport> layers)
    {
        var q = layers.Where(l => l.Quantized && double.IsFinite(l.PaperBits)).ToList();
        double weights = q.Sum(l => (double)l.InFeatures * l.OutFeatures);
        return new ModelBits(
            q.Sum(l => l.PaperBits * l.InFeatures * l.OutFeatures) / weights,
            q.Sum(l => l.StoredBits * l.InFeatures * l.OutFeatures) / weights,
            weights);
    }
}

/// <summary>How a run treats each linear, and who hears about progress.</summary>
public sealed class CalibrationPlan
{
    /// <summary>Solver options for a linear, or null to keep it in full precision.</summary>
    public required Func<NamedLinear, SolverOptions?> OptionsFor { get; init; }
    /// <summary>RTN needs no statistics and no forward passes.</summary>
    public bool RoundToNearest { get; init; }
    /// <summary>GPTAQ: run the float stream and accumulate D.</summary>
    public bool FloatStream { get; init; }
    /// <summary>OAC: each linear gets its own output-adaptive Hessian instead of the layer-wise one.</summary>
    public OacOptions? OutputAdaptive { get; init; }
    public Action<LayerReport, int, int>? OnLayer { get; init; }
    public Action<string>? OnWarning { get; init; }
}

/// <summary>The sequential pipeline of spec §6: layer-0 inputs are captured once; then, block by
/// block and group by group in true-sequential order, the group's input statistics are gathered
/// from the quantized stream (and, for GPTAQ, from the float stream run with the block's original
/// weights), its linears are solved and replaced, and finally both streams advance through the
/// block. Only one block's originals and the streams' activations are held at a time, and
/// inputs are captured one batch at a time (no per-layer input cache), trading forward passes for
/// memory as spec §6.4 allows.</summary>
public static class SequentialCalibrator
{
    sealed class CaptureComplete : Exception;

    const long TokensPerBatch = 8192;

    public static Dictionary<string, SolvedLinear> Run(DecoderModel model, IReadOnlyList<long[]> sequences, CalibrationPlan plan, CancellationToken ct = default)
    {
        var results = new Dictionary<string, SolvedLinear>(StringComparer.Ordinal);
        if (plan.OutputAdaptive is not null && plan.FloatStream)
            throw new DotQuantException(ErrorCodes.Internal, "the output-adaptive Hessian has no asymmetric (GPTAQ) term");
        var linears = Enumerable.Range(0, model.BlockCount)
            .SelectMany(b => model.LinearGroups(b).SelectMany(g => g).Select(l => (Block: b, Linear: l))).ToList();
        var planned = linears.ToDictionary(x => x.Linear.Name, x => plan.OptionsFor(x.Linear));
        int total = planned.Values.Count(o => o is not null), done = 0;

        void Report(LayerReport r)
        {
            if (r.Quantized) done++;
            plan.OnLayer?.Invoke(r, done, total);
        }

        if (plan.RoundToNearest)
        {
            foreach (var (block, lin) in linears)
            {
                ct.ThrowIfCancellationRequested();
                var o = planned[lin.Name];
                if (o is null) { Report(new LayerReport(lin.Name, block, lin.InFeatures, lin.OutFeatures, false, 16, 0, double.NaN, 0, 0)); continue; }
                var sw = Stopwatch.StartNew();
                using var w = lin.Weight.to(ScalarType.Float32);
                var q = RtnSolver.Solve(w, o);
                Replace(lin, q, results);
                Report(Describe(lin, block, o, q, sw.Elapsed.TotalSeconds, double.NaN));
            }
            return results;
        }

        var batches = Batch(sequences);
        var contexts = new Dictionary<long, ForwardContext>();
        ForwardContext Context(long length) => contexts.TryGetValue(length, out var c) ? c : contexts[length] = model.CreateContext(0, length);
        List<Tensor> xq = batches.Select(b => { using var ids = tensor(b.SelectMany(s => s).ToArray(), [b.Count, b[0].Length]); return model.Embed(ids).DetachFromDisposeScope(); }).ToList();
        List<Tensor>? xf = plan.FloatStream ? xq.Select(t => t.clone().DetachFromDisposeScope()).ToList() : null;
        var ids = batches.Select(b => b.ToArray()).ToList();
        var oac = new Dictionary<NamedLinear, Tensor>();
        List<NamedLinear> Planned(int block) => model.LinearGroups(block).SelectMany(g => g).Where(l => planned[l.Name] is not null).ToList();
        try
        {
            if (plan.OutputAdaptive is { Schedule: OacSchedule.Once } once)
                oac = OutputAdaptiveHessian.Compute(model, 0, xq, ids, Enumerable.Range(0, model.BlockCount).SelectMany(Planned).ToList(), once, Context, ct);
            for (int b = 0; b < model.BlockCount; b++)
            {
                var originals = new Dictionary<NamedLinear, Tensor>();
                try
                {
                    if (plan.OutputAdaptive is { Schedule: OacSchedule.Sequential } seq)
                    {
                        var sw = Stopwatch.StartNew();
                        foreach (var (k, v) in OutputAdaptiveHessian.Compute(model, b, xq, ids, Planned(b), seq, Context, ct)) oac[k] = v;
                        plan.OnWarning?.Invoke($"block {b}: output-adaptive Hessians in {sw.Elapsed.TotalSeconds:F1} s");
                    }
                    foreach (var group in model.LinearGroups(b))
                    {
                        var active = group.Where(l => planned[l.Name] is not null).ToList();
                        foreach (var l in group.Where(l => planned[l.Name] is null))
                            Report(new LayerReport(l.Name, b, l.InFeatures, l.OutFeatures, false, 16, 0, double.NaN, 0, 0));
                        if (active.Count == 0) continue;
                        ct.ThrowIfCancellationRequested();

                        if (plan.OutputAdaptive is { Schedule: OacSchedule.SequentialGroups } perGroup)
                            foreach (var (k, v) in OutputAdaptiveHessian.Compute(model, b, xq, ids, active, perGroup, Context, ct)) oac[k] = v;
                        var sw = Stopwatch.StartNew();
                        // The layer-wise H (and GPTAQ's D) of the group; with OAC every linear has its H̄ already.
                        Tensor? h = null, d = null;
                        if (plan.OutputAdaptive is null)
                        {
                            using var stats = new LayerStatistics(group[0].InFeatures, plan.FloatStream);
                            for (int i = 0; i < xq.Count; i++)
                            {
                                using var scope = NewDisposeScope();
                                var inputQ = Capture(model, b, group[0], xq[i], Context(xq[i].shape[1]));
                                Tensor? inputF = null;
                                if (xf is not null)
                                    inputF = WithOriginals(originals, () => Capture(model, b, group[0], xf[i], Context(xf[i].shape[1])));
                                stats.Add(inputQ, inputF);
                                inputQ.Dispose();
                                inputF?.Dispose();
                            }
                            (h, d) = stats.Finish();
                        }
                        double statSeconds = sw.Elapsed.TotalSeconds / active.Count;
                        try
                        {
                            foreach (var lin in active)
                            {
                                ct.ThrowIfCancellationRequested();
                                var solve = Stopwatch.StartNew();
                                var o = planned[lin.Name]!;
                                SolvedLinear q;
                                double rtnLoss;
                                var hl = oac.TryGetValue(lin, out var hOac) ? hOac : h!;
                                using (var w0 = lin.Weight.to(ScalarType.Float32))
                                {
                                    q = Solvers.Solve(w0, hl, d, o, lin.Name, plan.OnWarning);
                                    rtnLoss = Solvers.RtnBaseline(o) is { } rtn ? RtnObjective(w0, hl, rtn, q.DampUsed) : double.NaN;
                                }
                                if (oac.Remove(lin, out var used)) used.Dispose();
                                if (xf is null) Replace(lin, q, results);
                                else
                                {
                                    // GPTAQ keeps the original for the float stream of this block.
                                    originals[lin] = lin.ExchangeWeight(q.Dequantize().DetachFromDisposeScope());
                                    results[lin.Name] = q;
                                }
                                Report(Describe(lin, b, o, q, statSeconds + solve.Elapsed.TotalSeconds, rtnLoss));
                            }
                        }
                        finally
                        {
                            h?.Dispose();
                            d?.Dispose();
                        }
                    }

                    // Advance the streams: quantized weights for X_q, the originals for X_f.
                    xq = Advance(model, b, xq, Context);
                    if (xf is not null)
                        xf = WithOriginals(originals, () => Advance(model, b, xf, Context));
                }
                finally
                {
                    foreach (var t in originals.Values) t.Dispose();
                }
            }
            return results;
        }
        catch
        {
            foreach (var q in results.Values) q.Dispose();
            throw;
        }
        finally
        {
            foreach (var t in xq) t.Dispose();
            foreach (var t in xf ?? []) t.Dispose();
            foreach (var c in contexts.Values) c.Dispose();
            foreach (var t in oac.Values) t.Dispose();
        }
    }

    static LayerReport Describe(NamedLinear lin, int block, SolverOptions o, SolvedLinear q, double seconds, double rtnLoss)
    {
        var (bits, group) = o.Kind switch
        {
            SolverKind.SpQR => (o.Spqr!.Bits, o.Spqr.GroupSize),
            SolverKind.BiLLM => (1, o.Billm!.BlockSize),
            _ => (o.Bits, o.GroupSize),
        };
        return new LayerReport(lin.Name, block, lin.InFeatures, lin.OutFeatures, true, bits, group, q.Loss, seconds, q.DampUsed, rtnLoss,
            q.PaperBits, q.StoredBits, q.Kind, (q as SpqrLinear)?.OutlierCount ?? 0, (q as BinaryLinear)?.SalientColumns ?? 0);
    }

    /// <summary>tr(ΔW H_λ ΔWᵀ) for round-to-nearest, with dead channels handled as the solver does,
    /// so it is directly comparable with the solver's loss (spec V-4, V-12).</summary>
    static double RtnObjective(Tensor w0, Tensor h, SolverOptions o, double damp)
    {
        using var scope = NewDisposeScope();
        using var rtn = RtnSolver.Solve(w0, o);
        var hd = h.clone();
        var dead = hd.diagonal().eq(0);
        hd.diagonal().masked_fill_(dead, 1);
        hd.diagonal().add_(damp * hd.diagonal().mean().item<float>());
        var dw = w0.masked_fill(dead.unsqueeze(0), 0) - rtn.Dequantize();
        return dw.matmul(hd).mul_(dw).sum().to(ScalarType.Float64).item<double>();
    }

    static void Replace(NamedLinear lin, SolvedLinear q, Dictionary<string, SolvedLinear> results)
    {
        lin.SetWeight(q.Dequantize());
        results[lin.Name] = q;
    }

    /// <summary>Runs block b on x until <paramref name="target"/> receives its input; returns that input.</summary>
    static Tensor Capture(DecoderModel model, int b, NamedLinear target, Tensor x, ForwardContext ctx)
    {
        Tensor? captured = null;
        try
        {
            using var output = model.ForwardBlock(b, x, ctx, (lin, input) =>
            {
                if (!ReferenceEquals(lin, target)) return;
                captured = input.clone().DetachFromDisposeScope();
                throw new CaptureComplete();
            });
        }
        catch (CaptureComplete)
        {
        }
        return captured ?? throw new DotQuantException(ErrorCodes.Internal, $"block {b} never called {target.Name}");
    }

    static List<Tensor> Advance(DecoderModel model, int b, List<Tensor> stream, Func<long, ForwardContext> context)
    {
        var next = new List<Tensor>(stream.Count);
        foreach (var x in stream)
        {
            next.Add(model.ForwardBlock(b, x, context(x.shape[1])).DetachFromDisposeScope());
            x.Dispose();
        }
        return next;
    }

    /// <summary>Runs <paramref name="action"/> with the block's already-quantized linears holding
    /// their original weights again.</summary>
    static T WithOriginals<T>(Dictionary<NamedLinear, Tensor> originals, Func<T> action)
    {
        var swapped = originals.ToDictionary(kv => kv.Key, kv => kv.Key.ExchangeWeight(kv.Value));
        try
        {
            return action();
        }
        finally
        {
            foreach (var (lin, quantized) in swapped) lin.ExchangeWeight(quantized);
        }
    }

    /// <summary>Consecutive sequences of equal length, up to ~8k tokens per batch.</summary>
    static List<List<long[]>> Batch(IReadOnlyList<long[]> sequences)
    {
        var batches = new List<List<long[]>>();
        foreach (var s in sequences)
        {
            var last = batches.Count > 0 ? batches[^1] : null;
            if (last is not null && last[0].Length == s.Length && (last.Count + 1) * (long)s.Length <= TokensPerBatch)
                last.Add(s);
            else
                batches.Add([s]);
        }
        return batches;
    }
}
