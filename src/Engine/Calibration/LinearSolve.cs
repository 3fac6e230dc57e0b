using System.Diagnostics;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.Models;
using DotQuant.Engine.Quantizers;
using static TorchSharp.torch;

namespace DotQuant.Engine.Calibration;

/// <summary>One linear solved: its quantized form, round-to-nearest's loss on the same statistics
/// (NaN unless asked for), the solve's seconds and the solver's warnings.</summary>
public sealed record LinearSolution(SolvedLinear Q, double RtnLoss, double Seconds, IReadOnlyList<string> Warnings);

/// <summary>Solves one linear from its statistics, wherever that happens (the coordinator, or a worker
/// of a distributed run): the same call, so the same bits.</summary>
public static class LinearSolve
{
    /// <param name="consumeH">The solver may overwrite <paramref name="h"/> (its last user).</param>
    /// <param name="rtnBaseline">Measure round-to-nearest's loss first (evaluate.rtn_baseline).</param>
    public static LinearSolution Run(NamedLinear lin, Tensor? h, Tensor? d, SolverOptions o, bool consumeH, FactorCache factors, bool rtnBaseline,
        Action<string>? warn, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        var warnings = new List<string>();
        using var w0 = lin.Weight.to(ScalarType.Float32);
        // Measured before the solver may consume H; its damping is applied once the solver chose it.
        RtnObjective? rtn = null;
        if (rtnBaseline && h is not null && Solvers.RtnBaseline(o) is { } ro)
            using (PhaseClock.Measure("rtn baseline"))
                rtn = RtnObjective.Of(w0, h, ro);
        using var phase = PhaseClock.Measure("solve");
        var q = Solvers.Solve(w0, h, d, o, lin.Name, w => { warnings.Add(w); warn?.Invoke(w); }, ct, consumeH: consumeH, factors: factors);
        return new LinearSolution(q, rtn?.At(q.DampUsed) ?? double.NaN, clock.Elapsed.TotalSeconds, warnings);
    }
}

/// <summary>Where a group's linears are solved when not one after another in this process: a distributed
/// run spreads a group's solves over its workers.</summary>
public interface ISolvePlacement
{
    /// <summary>Solves those of <paramref name="active"/> that go elsewhere and returns them by name (the
    /// caller owns them); the others, absent from the result, are solved here.</summary>
    IReadOnlyDictionary<string, LinearSolution> SolveElsewhere(BlockWork work, IReadOnlyList<NamedLinear> active, GroupStatistics stats, bool rtnBaseline);
}
