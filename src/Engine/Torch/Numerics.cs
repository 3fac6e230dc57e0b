using System.Globalization;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;

namespace DotQuant.Engine.Torch;

/// <summary>What the bytes of a run depend on besides its inputs, and the settings that make them the
/// same on every x86-64 machine with AVX2 (docs/reliability.md, "Determinism"). Measured on libtorch
/// 2.10: ATen's vectorized kernels take a different code path on AVX-512 CPUs (log_softmax, reductions:
/// the wider lanes sum in another order); MKL picks its kernels by CPU (on Intel AVX-512 CPUs they differ
/// from AVX2; cholesky_inverse differs even on AMD unless its reproducibility mode is set); and LAPACK's
/// Cholesky and ATen's reductions over more than 32k elements split their work by thread, so the thread
/// count changes the last bits. In portable mode (the default) the process asks ATen for its AVX2 kernels
/// (ATEN_CPU_CAPABILITY=avx2) and MKL for its AVX2 conditional numerical reproducibility branch
/// (MKL_CBWR=AVX2): bytes then depend only on the thread count, which <see cref="Key"/> names and the
/// run's fingerprint (the cache key) includes. DOTQUANT_NUMERICS=native keeps libtorch's own choices
/// (the key then names the CPU). A variable the user set is never overridden, and the key reports it.</summary>
public static class Numerics
{
    public const string ModeVariable = "DOTQUANT_NUMERICS";
    public const string AtenVariable = "ATEN_CPU_CAPABILITY";
    public const string MklVariable = "MKL_CBWR";

    /// <summary>True when this CPU can run the portable kernels (x86-64 with AVX2 and FMA).</summary>
    public static bool PortableAvailable => RuntimeInformation.ProcessArchitecture == Architecture.X64 && Avx2.IsSupported && Fma.IsSupported;

    static bool Native => string.Equals(Environment.GetEnvironmentVariable(ModeVariable), "native", StringComparison.OrdinalIgnoreCase);

    /// <summary>Sets the portable kernels' variables in the C environment; must run before libtorch is
    /// loaded (ATen and MKL read them once). Returns false when it left them alone.</summary>
    public static bool Apply()
    {
        if (Native || !PortableAvailable) return false;
        ProcessEnvironment.SetIfUnset(AtenVariable, "avx2");
        ProcessEnvironment.SetIfUnset(MklVariable, "AVX2");
        return true;
    }

    /// <summary>The numerics a run's bytes depend on: the kernels' code paths and the thread count,
    /// e.g. "aten=avx2 mkl=AVX2 threads=2". Two runs with equal keys and inputs write the same bytes.</summary>
    public static string Key(int threads) =>
        string.Create(CultureInfo.InvariantCulture, $"aten={Effective(AtenVariable, NativeAten)} mkl={Effective(MklVariable, NativeMkl)} threads={threads}");

    static string Effective(string variable, Func<string> chosenByLibrary) =>
        Environment.GetEnvironmentVariable(variable) is { Length: > 0 } set ? set : chosenByLibrary();

    /// <summary>ATen's own choice when nothing is set: AVX-512 kernels where the CPU has F, BW, VL and DQ.</summary>
    static string NativeAten()
    {
        if (RuntimeInformation.ProcessArchitecture != Architecture.X64) return "native-" + RuntimeInformation.ProcessArchitecture.ToString().ToLowerInvariant();
        if (Avx512F.IsSupported && Avx512BW.IsSupported && Avx512DQ.IsSupported && Avx512F.VL.IsSupported) return "native-avx512";
        return Avx2.IsSupported ? "native-avx2" : "native-default";
    }

    /// <summary>MKL's own choice depends on the vendor as well as the instruction set.</summary>
    static string NativeMkl() =>
        RuntimeInformation.ProcessArchitecture != Architecture.X64 ? "none" : $"native-{Vendor()}-{(Avx512F.IsSupported ? "avx512" : Avx2.IsSupported ? "avx2" : "sse")}";

    static string Vendor()
    {
        if (!X86Base.IsSupported) return "unknown";
        var (_, ebx, ecx, edx) = X86Base.CpuId(0, 0);
        Span<byte> name = stackalloc byte[12];
        BitConverter.TryWriteBytes(name[..4], ebx);
        BitConverter.TryWriteBytes(name[4..8], edx);
        BitConverter.TryWriteBytes(name[8..], ecx);
        return System.Text.Encoding.ASCII.GetString(name).ToLowerInvariant();
    }
}
