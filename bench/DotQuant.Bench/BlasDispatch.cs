using System.Diagnostics;
using System.Globalization;
using System.Text;
using static TorchSharp.torch;

namespace DotQuant.Bench;

/// <summary>Issue 13's first question: why libtorch's fp32 matmul reaches less of this AMD EPYC than
/// Debian's OpenBLAS. Each row is a fresh process with one environment setting (MKL and OpenMP read
/// theirs at start-up), measuring the matmul shapes calibration runs: the square peak, XᵀX of a
/// calibration batch, and a linear's forward, in fp32 and in bf16 (which libtorch sends to oneDNN,
/// whose kernels dispatch on the CPU's ISA rather than its vendor).</summary>
static class BlasDispatch
{
    public const string Marker = "blas";

    static readonly (string Label, string[] Env)[] Settings =
    [
        ("default", []),
        ("MKL_DEBUG_CPU_TYPE=5", ["MKL_DEBUG_CPU_TYPE=5"]),
        ("MKL_ENABLE_INSTRUCTIONS=AVX512", ["MKL_ENABLE_INSTRUCTIONS=AVX512"]),
        ("OMP_WAIT_POLICY=PASSIVE", ["OMP_WAIT_POLICY=PASSIVE"]),
    ];

    public static string Run()
    {
        var sb = new StringBuilder();
        sb.AppendLine("## BLAS dispatch on this CPU");
        sb.AppendLine();
        sb.AppendLine($"Produced by `dotnet run -c Release --project bench/DotQuant.Bench -- blas` on {DateTime.UtcNow:yyyy-MM-dd} ({Machine.CpuModel()}, {Environment.ProcessorCount} cores, AVX-512 with BF16). GFLOP/s, best of 5, one fresh process per row; libtorch {TorchSharp.torch.__version__} with {get_num_threads()} threads.");
        sb.AppendLine();
        sb.AppendLine("| setting | fp32 2048² · 2048² | fp32 XᵀX (16384×2048) | fp32 linear 16384×2048 · 2048→5632 | bf16 linear (same) |");
        sb.AppendLine("|---|---|---|---|---|");
        foreach (var (label, env) in Settings)
            sb.AppendLine($"| {label} | {ChildRun(env)} |");
        sb.AppendLine();
        sb.AppendLine("Reading it: compare the fp32 columns with the 171 GFLOP/s issue 13 quotes for Debian's OpenBLAS on these cores, and the bf16 column with fp32: libtorch sends bf16 matmuls to oneDNN's AVX-512-BF16 kernels. The MKL variables exist for MKL's vendor dispatch on AMD; OMP_WAIT_POLICY=PASSIVE is the shared-CPU candidate (its cost when the CPU is not shared is the row's difference from default).");
        return sb.ToString();
    }

    static string ChildRun(string[] env)
    {
        var psi = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardOutput = true };
        if (Path.GetFileNameWithoutExtension(Environment.ProcessPath!) == "dotnet")
            psi.ArgumentList.Add(typeof(BlasDispatch).Assembly.Location);
        psi.ArgumentList.Add("blas-child");
        foreach (var e in env)
        {
            var kv = e.Split('=', 2);
            psi.Environment[kv[0]] = kv[1];
        }
        using var p = Process.Start(psi)!;
        string line = p.StandardOutput.ReadToEnd().Trim().Split('\n')[^1];
        p.WaitForExit();
        return p.ExitCode == 0 ? line : $"failed ({p.ExitCode})";
    }

    /// <summary>The measurements of one process, as one table row's cells.</summary>
    public static int Child()
    {
        double Best(Func<double> run) { run(); return Enumerable.Range(0, 5).Select(_ => run()).Max(); }
        double Time(Action a, double flops) { var sw = Stopwatch.StartNew(); a(); return flops / sw.Elapsed.TotalSeconds / 1e9; }
        using var a = randn(2048, 2048);
        using var b = randn(2048, 2048);
        double square = Best(() => Time(() => { using var _ = a.matmul(b); }, 2.0 * 2048 * 2048 * 2048));
        using var x = randn(16384, 2048);
        double xtx = Best(() => Time(() => { using var _ = x.t().matmul(x); }, 2.0 * 16384 * 2048 * 2048));
        using var w = randn(5632, 2048).mul_(Scalars.Of(0.02));
        double linear = Best(() => Time(() => { using var _ = nn.functional.linear(x, w); }, 2.0 * 16384 * 2048 * 5632));
        using var xb = x.to(ScalarType.BFloat16);
        using var wb = w.to(ScalarType.BFloat16);
        double bf16 = Best(() => Time(() => { using var _ = nn.functional.linear(xb, wb); }, 2.0 * 16384 * 2048 * 5632));
        Console.WriteLine(string.Join(" | ", new[] { square, xtx, linear, bf16 }.Select(v => v.ToString("F1", CultureInfo.InvariantCulture))));
        return 0;
    }
}
