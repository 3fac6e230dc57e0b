using System.Runtime.InteropServices;

namespace DotQuant.Tool;

/// <summary>How glibc's malloc treats libtorch's large tensors. By default every allocation above a
/// (dynamic, at most 32 MB) threshold is its own mmap, unmapped again when freed, so each activation
/// batch, XᵀX operand and dequantized weight arrives as fresh pages the kernel must fault in and zero:
/// measured on the issue-13 shape (GPTQ of a 2-layer hidden-2048 Llama, 16k tokens), 50 s of the run's
/// 121 s were system time. Keeping freed blocks in the heap (mmap and trim thresholds of 1 GiB, what
/// MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ set at start-up) made the same run 85 s with 9 s of
/// system time; peak RSS is what the run needs anyway. The tool applies it unless the user tuned malloc
/// through those variables or GLIBC_TUNABLES. glibc only: elsewhere (musl, macOS, Windows) it does nothing.</summary>
static class AllocatorPolicy
{
    const int TrimThreshold = -1, MmapThreshold = -3;    // M_TRIM_THRESHOLD, M_MMAP_THRESHOLD (malloc.h)
    public const int Threshold = 1 << 30;
    static readonly string[] UserSettings = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"];

    [DllImport("libc", EntryPoint = "mallopt")]
    static extern int MallOpt(int parameter, int value);

    [DllImport("libc", EntryPoint = "gnu_get_libc_version")]
    static extern IntPtr GlibcVersion();

    /// <summary>keep: the thresholds only; trim (the default): the thresholds and a malloc_trim between the
    /// calibration's phases (NativeHeap), so that what the heap keeps is what the memory plan counts;
    /// glibc: neither. For the bench's comparison (bench/reliability.md, "Memory plan").</summary>
    public const string Variable = "DOTQUANT_MALLOC";

    /// <summary>True when the thresholds were set.</summary>
    public static bool Apply()
    {
        string mode = Environment.GetEnvironmentVariable(Variable) is { Length: > 0 } m ? m : "trim";
        if (mode == "glibc") return false;
        if (!OperatingSystem.IsLinux() || UserSettings.Any(v => Environment.GetEnvironmentVariable(v) is { Length: > 0 })) return false;
        try
        {
            GlibcVersion();
        }
        catch (EntryPointNotFoundException)
        {
            return false;       // not glibc: its mallopt means something else or nothing
        }
        bool set = MallOpt(MmapThreshold, Threshold) == 1 & MallOpt(TrimThreshold, Threshold) == 1;
        DotQuant.Engine.Torch.NativeHeap.TrimBetweenPhases = set && mode != "keep";
        return set;
    }
}
