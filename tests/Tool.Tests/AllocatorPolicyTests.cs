using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

/// <summary>The tool keeps freed tensors in malloc's heap (glibc) unless the user tuned malloc, and the
/// policy changes time only, never bytes.</summary>
public class AllocatorPolicyTests
{
    [Fact]
    public void Apply_sets_the_thresholds_on_glibc_and_leaves_a_users_tuning_alone()
    {
        Assert.True(AllocatorPolicy.Apply(), "glibc's mallopt refused the thresholds");
        Environment.SetEnvironmentVariable("MALLOC_MMAP_THRESHOLD_", "65536");
        try
        {
            Assert.False(AllocatorPolicy.Apply());
        }
        finally
        {
            Environment.SetEnvironmentVariable("MALLOC_MMAP_THRESHOLD_", null);
        }
    }

    [Fact]
    public async Task A_run_writes_the_same_bytes_with_and_without_the_policy()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("quant.yaml"),
            $"version: 1\nmodel: {SharedPaths.Stories260K}\ncalibration:\n  data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")}\n  samples: 16\n  sequence_length: 128\n" +
            "quantize:\n  method: gptq\n  bits: 4\n  group_size: 16\noutput:\n  name: out\n");
        string tool = Path.Combine(AppContext.BaseDirectory, "dotnet-quantize.dll");
        // GLIBC_TUNABLES set to a no-op counts as the user's own malloc tuning: the policy stands aside.
        foreach (var (folder, env) in new[] { ("with", new Dictionary<string, string>()), ("without", new Dictionary<string, string> { ["GLIBC_TUNABLES"] = "glibc.malloc.perturb=0" }) })
        {
            var r = await Fixtures.RunInAsync("dotnet", env, null, tool, "run", dir.File("quant.yaml"), "--output", dir.File(folder));
            Assert.True(r.ExitCode == 0, r.Stderr);
        }
        var files = Directory.GetFiles(dir.File("with/out")).Select(Path.GetFileName).Order().ToList();
        Assert.NotEmpty(files);
        foreach (var f in files)
            Assert.Equal(File.ReadAllBytes(Path.Combine(dir.File("with/out"), f!)), File.ReadAllBytes(Path.Combine(dir.File("without/out"), f!)));
    }
}
