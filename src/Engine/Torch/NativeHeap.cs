using System.Runtime.InteropServices;

namespace DotQuant.Engine.Torch;

/// <summary>glibc's heap, where libtorch's tensors live. With the tool's allocator policy (large freed
/// blocks stay in the heap instead of going back to the kernel, for speed) the heap keeps the high-water
/// mark of every phase: freed H matrices, activations and dequantized weights of different sizes leave
/// holes that later, differently sized tensors do not fill, and the process's anonymous memory grows past
/// what it uses (measured: 5.5 GiB for a run whose live tensors peak at 2.9 GiB). Trimming between the
/// calibration's phases (each group, each block) returns those holes to the kernel — malloc_trim releases
/// free pages in the middle of the heap too — so the memory plan, which counts live tensors, bounds the
/// process. glibc only; elsewhere a no-op.</summary>
public static class NativeHeap
{
    /// <summary>Set by the tool's allocator policy: trim after every group and block.</summary>
    public static bool TrimBetweenPhases { get; set; }

    [DllImport("libc", EntryPoint = "mallopt")]
    static extern int MallOpt(int parameter, int value);

    static int _forward = 64 << 20, _solve = 1 << 30;

    /// <summary>Tensors at least this large are mapped for themselves and returned to the kernel when freed
    /// (M_MMAP_THRESHOLD), when the policy is on; a run sets the two sizes from its memory plan. In the
    /// forward passes (capture, advance, evaluation) it is one batch's hidden states: the per-batch states
    /// kept between groups and the MLP's wide activations then never leave holes in the heap that the next
    /// batch's tensors of another size cannot fill (measured on llama-tiny: 0.70 GiB with them in the heap,
    /// 0.50 GiB mapped, the same time), while the many small temporaries stay in the heap. In the solves
    /// it is just above the largest forward temporary: the solver's copies of W stay in the heap, and only
    /// the few n² matrices of a wide linear — which its O(n³) factorization dwarfs — are mapped.</summary>
    public static void Sizes(long forwardBytes, long solveBytes)
    {
        _forward = (int)Math.Clamp(forwardBytes, 1L << 20, 1L << 30);
        _solve = (int)Math.Clamp(solveBytes, 1L << 20, 1L << 30);
    }

    /// <summary>Entering a forward pass (statistics, advancing the stream, evaluation).</summary>
    public static void Forward() => Threshold(_forward);

    /// <summary>Entering a forward pass whose hidden states come in pieces smaller than a batch (the
    /// output-adaptive Hessian's chunks): pieces of <paramref name="hiddenBytes"/> are mapped too.</summary>
    public static void Forward(long hiddenBytes) => Threshold((int)Math.Clamp(Math.Min(hiddenBytes, _forward), 1L << 20, 1L << 30));

    /// <summary>Entering a group's solves.</summary>
    public static void Solving() => Threshold(_solve);

    static void Threshold(int bytes)
    {
        if (TrimBetweenPhases && Glibc) MallOpt(-3, bytes);   // M_MMAP_THRESHOLD
    }

    /// <summary>How many trims ran (the bench reports it).</summary>
    public static long Trims => Interlocked.Read(ref _trims);
    static long _trims;

    [DllImport("libc", EntryPoint = "malloc_trim")]
    static extern int MallocTrim(nuint pad);

    static readonly bool Glibc = OperatingSystem.IsLinux() && HasGlibc();

    [DllImport("libc", EntryPoint = "gnu_get_libc_version")]
    static extern IntPtr GlibcVersion();

    static bool HasGlibc()
    {
        try { GlibcVersion(); return true; }
        catch (EntryPointNotFoundException) { return false; }
        catch (DllNotFoundException) { return false; }
    }

    /// <summary>The end of a phase whose temporaries are all freed: give their pages back if asked to.</summary>
    public static void PhaseEnded()
    {
        if (!TrimBetweenPhases || !Glibc) return;
        MallocTrim(0);
        Interlocked.Increment(ref _trims);
    }
}
