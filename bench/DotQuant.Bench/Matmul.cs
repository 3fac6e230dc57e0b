using System.Diagnostics;
using static TorchSharp.torch;

namespace DotQuant.Bench;

static class Matmul
{
    /// <summary>Best observed fp32 GFLOP/s of an n×n by n×n matmul.</summary>
    public static double PeakGflops(int n, int runs)
    {
        using var a = randn(n, n);
        using var b = randn(n, n);
        using (a.matmul(b)) { }   // warm-up
        double best = 0;
        for (int i = 0; i < runs; i++)
        {
            var sw = Stopwatch.StartNew();
            using (a.matmul(b)) { }
            best = Math.Max(best, 2.0 * n * n * n / sw.Elapsed.TotalSeconds / 1e9);
        }
        return best;
    }
}

static class Machine
{
    public static double MemoryGiB() => GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / (double)(1L << 30);

    public static string CpuModel()
    {
        try
        {
            var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name"));
            return line?.Split(':', 2)[1].Trim() ?? "unknown CPU";
        }
        catch (IOException) { return "unknown CPU"; }
    }
}
