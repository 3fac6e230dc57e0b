using System.Diagnostics;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.Quantizers;
using static TorchSharp.torch;

namespace DotQuant.Bench;

/// <summary>Time to quantize one 4096×4096 linear with GPTQ from 128×2048 calibration tokens,
/// split into statistics (H accumulation), factorization (damped inverse Cholesky) and the
/// column loop.</summary>
static class LayerTiming
{
    public sealed record Result(double Statistics, double Factorization, double ColumnLoop, double Gflops);

    public static Result Measure(int n = 4096, int sequences = 128, int length = 2048)
    {
        var g = new TorchSharp.torch.Generator(3);
        using var channelScale = rand(n, generator: g).mul_(Scalars.Of(2L)).add_(Scalars.Of(0.1), Scalars.One);
        using var mix = randn(64, n, generator: g).mul_(Scalars.Of(0.5));
        using var stats = new LayerStatistics(n, false);
        var sw = new Stopwatch();
        for (int s = 0; s < sequences; s++)
        {
            using var scope = NewDisposeScope();
            // Correlated activations: per-channel scales plus a shared low-rank component.
            var x = randn(length, n, generator: g).mul_(channelScale).add_(randn(length, 64, generator: g).matmul(mix), Scalars.One);
            sw.Start();
            stats.Add(x);
            sw.Stop();
        }
        double statistics = sw.Elapsed.TotalSeconds;
        double flops = 2.0 * n * n * (double)sequences * length;
        var (h, _) = stats.Finish();
        using (h)
        {
            var f = Stopwatch.StartNew();
            using (InverseCholesky.Factor(h, 0.01, "bench").U) { }
            double factorization = f.Elapsed.TotalSeconds;
            using var w = randn(n, n, generator: g).mul_(Scalars.Of(0.02f));
            var solve = Stopwatch.StartNew();
            using (ColumnSolver.Solve(w, h, null, new SolverOptions { Bits = 4, GroupSize = 128 })) { }
            double total = solve.Elapsed.TotalSeconds;
            return new Result(statistics, factorization, total - factorization, flops / statistics / 1e9);
        }
    }
}
