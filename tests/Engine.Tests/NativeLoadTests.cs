using DotQuant.Build;
using static TorchSharp.torch;

namespace DotQuant.Engine.Tests;

public class NativeLoadTests
{
    static string OutputLibrary()
    {
        var found = Directory.EnumerateFiles(AppContext.BaseDirectory, "libLibTorchSharp.so", SearchOption.AllDirectories).ToList();
        Assert.NotEmpty(found);
        return found[0];
    }

    static string CacheLibrary()
    {
        string root = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } p
            ? p : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        return Path.Combine(root, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
    }

    [Fact]
    public void TensorOperationRuns()
    {
        using var a = tensor(new float[] { 1, 2, 3, 4 }, [2, 2]);
        using var b = a.matmul(a);
        Assert.Equal(new float[] { 7, 10, 15, 22 }, b.data<float>().ToArray());
    }

    [Fact]
    public void OutputCopyIsWeakenedAndCacheIsUntouched()
    {
        if (!OperatingSystem.IsLinux()) return;
        var output = File.ReadAllBytes(OutputLibrary());
        Assert.Equal(2, ElfVersionNeed.ReadFlags(output, "libstdc++.so.6", "GLIBCXX_3.4.32"));
        string cache = CacheLibrary();
        if (File.Exists(cache))
            Assert.Equal(0, ElfVersionNeed.ReadFlags(File.ReadAllBytes(cache), "libstdc++.so.6", "GLIBCXX_3.4.32"));
    }

    [Fact]
    public void PatcherWeakensOnlyTheMarkerVersionAndIsIdempotent()
    {
        string cache = CacheLibrary();
        if (!File.Exists(cache)) return;
        var image = File.ReadAllBytes(cache);
        var markers = new HashSet<string> { "_ZSt21ios_base_library_initv" };
        var r = ElfVersionNeed.Weaken(image, "libstdc++.so.6", "GLIBCXX_3.4.32", markers, out var patched);
        Assert.Equal("patched", r.Status);
        Assert.NotNull(patched);
        int differing = image.Zip(patched!).Count(p => p.First != p.Second);
        Assert.Equal(1, differing);   // one byte of one vna_flags
        Assert.Equal(2, ElfVersionNeed.ReadFlags(patched!, "libstdc++.so.6", "GLIBCXX_3.4.32"));
        Assert.Equal(0, ElfVersionNeed.ReadFlags(patched!, "libstdc++.so.6", "GLIBCXX_3.4.30"));

        var again = ElfVersionNeed.Weaken(patched!, "libstdc++.so.6", "GLIBCXX_3.4.32", markers, out var twice);
        Assert.Equal("already-weak", again.Status);
        Assert.Null(twice);
    }

    [Fact]
    public void PatcherRefusesWhenARealSymbolNeedsTheVersion()
    {
        string cache = CacheLibrary();
        if (!File.Exists(cache)) return;
        // GLIBCXX_3.4.30 is used by real symbols: weakening it would defer a failure to run time.
        var r = ElfVersionNeed.Weaken(File.ReadAllBytes(cache), "libstdc++.so.6", "GLIBCXX_3.4.30", new HashSet<string>(), out var patched);
        Assert.Equal("refused", r.Status);
        Assert.Null(patched);
    }

    [Fact]
    public void PatcherRejectsNonElfAndTruncatedInput()
    {
        var r = ElfVersionNeed.Weaken(new byte[100], "libstdc++.so.6", "GLIBCXX_3.4.32", new HashSet<string>(), out _);
        Assert.Equal("refused", r.Status);
        string cache = CacheLibrary();
        if (!File.Exists(cache)) return;
        var truncated = File.ReadAllBytes(cache).AsSpan(0, 4096).ToArray();
        var t = ElfVersionNeed.Weaken(truncated, "libstdc++.so.6", "GLIBCXX_3.4.32", new HashSet<string>(), out _);
        Assert.Equal("refused", t.Status);
    }

    [Fact]
    public void PatchFileReplacesAtomicallyAndKeepsTimestamp()
    {
        string cache = CacheLibrary();
        if (!File.Exists(cache)) return;
        using var dir = new DotQuant.Tests.TempDir();
        string copy = dir.File("lib.so");
        File.Copy(cache, copy);
        var stamp = new DateTime(2024, 1, 2, 3, 4, 5, DateTimeKind.Utc);
        File.SetLastWriteTimeUtc(copy, stamp);
        var r = ElfVersionNeed.PatchFile(copy, "libstdc++.so.6", "GLIBCXX_3.4.32", new HashSet<string> { "_ZSt21ios_base_library_initv" });
        Assert.Equal("patched", r.Status);
        Assert.Equal(stamp, File.GetLastWriteTimeUtc(copy));
        Assert.Single(Directory.GetFiles(dir.Path));   // no temp file left behind
    }
}
