using System.Security.Cryptography;
using DotQuant.Engine.Calibration;
using DotQuant.Runtime;
using DotQuant.Engine.Manifest;
using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

/// <summary>A full disk, for real: the output and the cache on a size-limited tmpfs the test mounts.
/// A run that cannot fit is refused before any work (DQ0155, naming the folder and the space needed); a
/// run that meets a full disk in the middle stops with DQ0155; neither leaves a partial output nor touches
/// a previous output or the cache's entries; once space is freed, --resume finishes with the bytes of an
/// undisturbed run.</summary>
public class DiskFullTests
{
    static string Manifest(string folder, int bits)
    {
        Directory.CreateDirectory(folder);
        string path = Path.Combine(folder, "quant.yaml");
        File.WriteAllText(path,
            $"version: 1\nmodel: {SharedPaths.Stories260K}\ncalibration:\n  data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")}\n  samples: 8\n  sequence_length: 64\n" +
            $"quantize:\n  method: gptq\n  bits: {bits}\n  group_size: 16\noutput:\n  name: out\n");
        return path;
    }

    static Dictionary<string, string> Hashes(string folder) =>
        Directory.GetFiles(folder, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal)
            .ToDictionary(f => Path.GetRelativePath(folder, f), f => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))));

    [Fact]
    public void A_run_that_cannot_fit_is_refused_first_and_leaves_the_previous_output_and_the_cache_alone()
    {
        using var manifests = new TempDir();
        using var fs = new SmallFilesystem(6L << 20);
        string four = Manifest(manifests.File("w4"), 4), three = Manifest(manifests.File("w3"), 3);
        string cache = fs.File("cache"), output = fs.File("build");

        var cached = CliRunner.Run("run", four, "--cache-dir", cache, "--format", "json");
        Assert.True(cached.ExitCode == 0, cached.Stderr);
        string entry = cached.LastJson().GetProperty("output").GetString()!;
        var entryBytes = Hashes(entry);
        var previous = CliRunner.Run("run", four, "--output", output, "-v", "q");
        Assert.True(previous.ExitCode == 0, previous.Stderr);
        var previousBytes = Hashes(Path.Combine(output, "out"));

        string ballast = fs.Fill(leave: 64 << 10);
        foreach (var args in new[] { new[] { "--cache-dir", cache }, new[] { "--output", output } })
        {
            var refused = CliRunner.Run(["run", three, .. args, "--resume"]);
            Assert.Equal(1, refused.ExitCode);
            Assert.Contains("DQ0155", refused.Stderr);
            Assert.Contains(fs.Path, refused.Stderr);
            Assert.Contains("needed", refused.Stderr);
        }
        Assert.Equal(previousBytes, Hashes(Path.Combine(output, "out")));
        Assert.Equal(entryBytes, Hashes(entry));
        var hit = CliRunner.Run("run", four, "--cache-dir", cache, "--require-cache", "--format", "json");
        Assert.True(hit.LastJson().GetProperty("cached").GetBoolean(), "the cache entry must still verify");

        File.Delete(ballast);
        var resumed = CliRunner.Run("run", three, "--output", output, "--resume", "-v", "q");
        Assert.True(resumed.ExitCode == 0, resumed.Stderr);
        Assert.NotEqual(previousBytes, Hashes(Path.Combine(output, "out")));
    }

    /// <summary>The disk fills up after block 1 (the test writes a ballast from the run's own block event, so
    /// the moment does not depend on the machine's speed).</summary>
    [Fact]
    public void A_disk_that_fills_mid_run_stops_it_with_DQ0155_and_resume_finishes_the_same_bytes()
    {
        using var manifests = new TempDir();
        using var fs = new SmallFilesystem(6L << 20);
        var m = ManifestParser.Load(Manifest(manifests.File("w4"), 4));
        var whole = QuantizeJob.Run(m, manifests.File("whole"));

        string? ballast = null;
        var e = Assert.Throws<DotQuantException>(() => QuantizeJob.Run(m, fs.Path, ev =>
        {
            if (ev is BlockEvent { Block: 1 } && ballast is null) ballast = fs.Fill();
        }, default, new RunOptions { Resume = true }));
        Assert.Equal(ErrorCodes.DiskFull, e.Code);
        Assert.Contains(fs.Path, e.Message);
        Assert.Contains("--resume", e.Message);
        Assert.False(Directory.Exists(fs.File("out")), "nothing may be published from a failed run");

        File.Delete(ballast!);
        var resumed = QuantizeJob.Run(m, fs.Path, null, default, new RunOptions { Resume = true });
        Assert.True(resumed.ResumedBlocks >= 1, "the blocks completed before the disk filled are kept");
        Assert.Equal(Hashes(whole.Output), Hashes(resumed.Output));
    }
}
