using System.Runtime.Intrinsics.X86;
using System.Security.Cryptography;
using System.Text.Json;
using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

/// <summary>"Same inputs, same bytes" where it is promised (docs/reliability.md): runs of the tool with
/// the same numerics key write identical folders; the thread count is part of the key (LAPACK and
/// ATen's large reductions split their work by thread), and so the cache key; in portable mode an
/// AVX-512 machine writes what an AVX2-only one writes. The method is SpQR on OAC's H̄, the most
/// sensitive case measured (its outlier decisions cascade from the last bits).</summary>
public class DeterminismTests
{
    static string Manifest(TempDir dir)
    {
        File.WriteAllText(dir.File("quant.yaml"),
            $"version: 1\nmodel: {SharedPaths.Stories260K}\ncalibration:\n  data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")}\n  samples: 16\n  sequence_length: 64\n  seed: 3\n" +
            "quantize:\n  method: spqr\n  hessian: output_adaptive\noutput:\n  name: out\n" +
            $"evaluate:\n  perplexity: {{ data: {SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt")}, sequence_length: 256, max_sequences: 4 }}\n");
        return dir.File("quant.yaml");
    }

    static async Task<Dictionary<string, string>> Run(TempDir dir, string folder, int threads, Dictionary<string, string>? env = null)
    {
        string tool = Path.Combine(AppContext.BaseDirectory, "dotnet-quantize.dll");
        var r = await Fixtures.RunInAsync("dotnet", env ?? [], null, tool, "run", Manifest(dir), "--output", dir.File(folder), "--threads", threads.ToString(), "-v", "q");
        Assert.True(r.ExitCode == 0, r.Stderr);
        return Directory.GetFiles(dir.File(folder + "/out")).Order(StringComparer.Ordinal)
            .ToDictionary(Path.GetFileName, f => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))))!;
    }

    static async Task<string> Key(TempDir dir, int threads, Dictionary<string, string>? env = null)
    {
        string tool = Path.Combine(AppContext.BaseDirectory, "dotnet-quantize.dll");
        var r = await Fixtures.RunInAsync("dotnet", env ?? [], null, tool, "fingerprint", Manifest(dir), "--threads", threads.ToString(), "--format", "json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var json = JsonDocument.Parse(r.Stdout).RootElement;
        return json.GetProperty("key").GetString() + " " + json.GetProperty("numerics").GetString();
    }

    [Fact]
    public async Task The_same_numerics_key_writes_the_same_bytes_and_the_thread_count_is_in_the_key()
    {
        using var dir = new TempDir();
        foreach (int threads in new[] { 1, 2 })
        {
            var first = await Run(dir, $"t{threads}a", threads);
            var second = await Run(dir, $"t{threads}b", threads);
            Assert.Equal(first, second);
        }
        string one = await Key(dir, 1), two = await Key(dir, 2);
        Assert.Contains("threads=1", one);
        Assert.Contains("threads=2", two);
        Assert.NotEqual(one.Split(' ')[0], two.Split(' ')[0]);        // another cache entry, never a false hit
    }

    /// <summary>Kernels forced to AVX2 the way an AVX2-only CPU would pick them (MKL's and oneDNN's
    /// instruction limits; ATen is asked for AVX2 by the tool anyway): the same bytes and the same key.</summary>
    [Fact]
    public async Task Portable_mode_writes_on_this_cpu_what_an_avx2_only_cpu_writes()
    {
        using var dir = new TempDir();
        var avx2Only = new Dictionary<string, string> { ["MKL_ENABLE_INSTRUCTIONS"] = "AVX2", ["ONEDNN_MAX_CPU_ISA"] = "AVX2", ["ATEN_CPU_CAPABILITY"] = "avx2" };
        var here = await Run(dir, "here", 2);
        var forced = await Run(dir, "forced", 2, avx2Only);
        Assert.Equal(here, forced);
        Assert.Equal(await Key(dir, 2), await Key(dir, 2, avx2Only));
        if (Avx512F.IsSupported && Avx512BW.IsSupported)
        {
            // The control: libtorch's own choice on this AVX-512 CPU computes other bits, which is what
            // portable mode removes (and the key says so). The test process's own policy is not inherited.
            var nativeEnv = new Dictionary<string, string> { ["DOTQUANT_NUMERICS"] = "native", ["ATEN_CPU_CAPABILITY"] = "", ["MKL_CBWR"] = "" };
            var native = await Run(dir, "native", 2, nativeEnv);
            Assert.NotEqual(here, native);
            Assert.NotEqual(await Key(dir, 2), await Key(dir, 2, nativeEnv));
        }
    }
}
