using System.Diagnostics;
using DotQuant.Engine.Awq;
using DotQuant.Engine.Formats;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.Models;
using DotQuant.Engine.Quantizers;
using static TorchSharp.torch;

namespace DotQuant.Engine.Calibration;

/// <summary>Where a calibrator's block results go and where it may stop: the package writer, and a
/// resume point after every block.</summary>
public interface IBlockCheckpoint
{
    /// <summary>Block <paramref name="block"/> is solved, its tensors are written and the streams have
    /// advanced: a run that stops now can continue at <paramref name="block"/> + 1.</summary>
    void Completed(int block, ActivationStream? stream, IHessianSource hessians, IReadOnlyList<LayerReport> reports);
}

/// <summary>The sequential pipeline of spec §6 with one block in memory. For each block: load it,
/// let the Hessian source prepare (OAC's per-block Hessians), then for each true-sequential group
/// get its statistics, solve each planned linear and put its dequantized weight in place (so later
/// groups see it), advance the quantized stream through the solved block, let the source advance what
/// it owns (GPTAQ's float stream), write the block's tensors, and checkpoint.</summary>
public sealed class Calibrator
{
    public required DecoderModel Model { get; init; }
    public required RunPlan Plan { get; init; }
    public required IHessianSource Hessians { get; init; }
    public required PackageWriter Writer { get; init; }
    public required string Scratch { get; init; }
    public IBlockCheckpoint? Checkpoint { get; init; }
    public Action<RunEvent>? Events { get; init; }
    public CancellationToken Cancellation { get; init; }
    /// <summary>Measure round-to-nearest's loss next to each solved linear's (evaluate.rtn_baseline).</summary>
    public bool RtnBaseline { get; init; }
    /// <summary>Transforms each block's float weights before its solves (AWQ's scales and clips).</summary>
    public AwqTransform? Transform { get; init; }
    /// <summary>Solves a group's linears elsewhere (a distributed run's workers); null: all here.</summary>
    public ISolvePlacement? Placement { get; init; }

    static readonly IReadOnlyDictionary<string, LinearSolution> NoSolutions = new Dictionary<string, LinearSolution>();
    static readonly IReadOnlyDictionary<string, Tensor> NoTensors = new Dictionary<string, Tensor>();

    /// <param name="stream">X_q at the input of <paramref name="firstBlock"/> (null for round-to-nearest).</param>
    /// <param name="reports">Reports of the blocks before <paramref name="firstBlock"/> (a resumed run).</param>
    public IReadOnlyList<LayerReport> Run(ActivationStream? stream, int firstBlock = 0, IReadOnlyList<LayerReport>? reports = null)
    {
        var all = new List<LayerReport>(reports ?? []);
        int total = Plan.Linears.Count(l => l.Options is not null), done = all.Count(r => r.Quantized);
        var planned = Plan.Linears.Where(l => l.Options is not null).Select(l => l.Linear.Name).ToHashSet(StringComparer.Ordinal);
        using var contexts = new ForwardContexts(Model);
        for (int b = firstBlock; b < Model.BlockCount; b++)
        {
            NativeHeap.PhaseEnded();           // the previous block and its temporaries are freed
            var blockTime = Stopwatch.StartNew();
            DecoderBlock block;
            using (PhaseClock.Measure("load"))
                block = Model.LoadBlock(b);
            using var owned = block;
            var work = new BlockWork
            {
                Model = Model, Block = block, Stream = stream!, Contexts = contexts, Planned = planned, Scratch = Scratch,
                Events = Events, Cancellation = Cancellation,
            };
            NativeHeap.Forward();
            IReadOnlyDictionary<string, Tensor> transformed = NoTensors;
            if (Transform is not null)
                using (PhaseClock.Measure("transform"))
                    transformed = Transform.Apply(work, l => Plan.OptionsFor(l.Name));
            using (PhaseClock.Measure("capture"))
                Hessians.BeginBlock(work);
            foreach (var group in block.LinearGroups)
            {
                NativeHeap.PhaseEnded();       // the previous group's statistics and solver copies are freed
                var active = group.Where(l => planned.Contains(l.Name)).ToList();
                foreach (var l in group.Where(l => !planned.Contains(l.Name)))
                    Report(new LayerReport(l.Name, b, l.InFeatures, l.OutFeatures, false, 16, 0, double.NaN, 0, 0));
                if (active.Count == 0) continue;
                Cancellation.ThrowIfCancellationRequested();
                var sw = Stopwatch.StartNew();
                GroupStatistics stats;
                NativeHeap.Forward();
                using (PhaseClock.Measure("capture"))
                    stats = Hessians.Group(work, group, active);
                using var ownedStats = stats;
                NativeHeap.PhaseEnded();       // the forward's activations are freed; the solves come next
                NativeHeap.Solving();
                using var factors = new FactorCache();
                double statSeconds = sw.Elapsed.TotalSeconds / active.Count;
                IReadOnlyDictionary<string, LinearSolution> elsewhere;
                using (PhaseClock.Measure("solve"))
                    elsewhere = Placement?.SolveElsewhere(work, active, stats, RtnBaseline) ?? NoSolutions;
                try
                {
                    foreach (var lin in active)
                    {
                        Cancellation.ThrowIfCancellationRequested();
                        var o = Plan.OptionsFor(lin.Name)!;
                        LinearSolution s;
                        if (elsewhere.TryGetValue(lin.Name, out var solvedThere))
                        {
                            s = solvedThere;
                            foreach (var w in s.Warnings) Events?.Invoke(new WarningEvent(w));
                        }
                        else s = LinearSolve.Run(lin, stats.H(lin), stats.D(lin), o, stats.LastUser(lin, active), factors, RtnBaseline,
                            w => Events?.Invoke(new WarningEvent(w)), Cancellation);
                        lin.UseSolved(s.Q);          // later groups and the stream see the quantized weight
                        Hessians.Solved(work, lin);
                        NativeHeap.PhaseEnded();   // the solver's copies and factorization are freed
                        Report(Describe(lin, b, o, s.Q, statSeconds + s.Seconds, s.RtnLoss));
                    }
                }
                catch
                {
                    foreach (var (name, s) in elsewhere)
                        if (!ReferenceEquals(active.First(l => l.Name == name).Solved, s.Q)) s.Q.Dispose();
                    throw;
                }
            }
            NativeHeap.Forward();
            using (PhaseClock.Measure("advance"))
            {
                if (Hessians.NeedsCalibration && !Hessians.AdvanceStream(work)) stream!.Advance(block, contexts, Cancellation);
                Hessians.EndBlock(work);
            }
            using (PhaseClock.Measure("write"))
            {
                Write(block, transformed.Count == 0 ? Model.Weights : new OverlaySource(Model.Weights, transformed));
                Checkpoint?.Completed(b, stream, Hessians, all);
            }
            Events?.Invoke(new BlockEvent(b, Model.BlockCount, blockTime.Elapsed.TotalSeconds));
        }
        return all;

        void Report(LayerReport r)
        {
            all.Add(r);
            if (r.Quantized) Events?.Invoke(new LayerEvent(r, ++done, total));
        }
    }

    /// <summary>The block's tensors in name order: solved linears packed, everything else as stored.</summary>
    void Write(DecoderBlock block, IWeightSource stored)
    {
        var solved = block.Linears.Where(l => l.Solved is not null).ToDictionary(l => l.Name, l => l.Solved!, StringComparer.Ordinal);
        foreach (var name in Model.BlockTensorNames(block.Index))
        {
            string? linear = name.EndsWith(".weight", StringComparison.Ordinal) ? name[..^".weight".Length] : null;
            if (linear is not null && solved.TryGetValue(linear, out var q)) Writer.AddLinear(linear, q);
            else Writer.AddStored(name, stored);
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
            q.PaperBits, q.StoredBits, q.Kind, (q as SpqrLinear)?.OutlierCount ?? 0, (q as BinaryLinear)?.SalientColumns ?? 0, q.Describe());
    }
}

/// <summary>tr(ΔW H_λ ΔWᵀ) for round-to-nearest on the same grid, with dead channels handled as the
/// solver does (their inputs get diag 1 and their weights 0), so it is directly comparable with the
/// solver's loss (spec V-4, V-12). Kept as Σ(ΔW·H)⊙ΔW + λ·‖ΔW‖²: no copy of H is made, and the damping
/// λ = damp·mean(diag H) is applied with whatever damp the solver ended up using.</summary>
public readonly record struct RtnObjective(double Quadratic, double Squares, double MeanDiagonal)
{
    public static RtnObjective Of(Tensor w0, Tensor h, SolverOptions o)
    {
        using var scope = NewDisposeScope();
        using var rtn = RtnSolver.Solve(w0, o);
        var dead = h.diagonal().eq(Scalars.Of(0.0));
        var dw = w0.masked_fill(dead.unsqueeze(0), Scalars.Of(0.0)) - rtn.Dequantize();
        double quadratic = dw.matmul(h).mul_(dw).sum().to(ScalarType.Float64).item<double>();
        double squares = dw.pow(Scalars.Of(2L)).sum().to(ScalarType.Float64).item<double>();
        double mean = h.diagonal().masked_fill(dead, Scalars.Of(1.0)).mean().item<float>();
        return new RtnObjective(quadratic, squares, mean);
    }

    public double At(double damp) => Quadratic + damp * MeanDiagonal * Squares;
}
