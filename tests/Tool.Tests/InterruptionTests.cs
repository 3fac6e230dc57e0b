using System.Diagnostics;
using System.Security.Cryptography;
using DotQuant.Engine.Models;
using DotQuant.Tests;
using static TorchSharp.torch;

namespace DotQuant.Tool.Tests;

/// <summary>What happens when a run is stopped, as a user would do it: a killed process resumed with
/// --resume, and SIGTERM in the middle of a long libtorch call.</summary>
public class InterruptionTests
{
    static readonly string Dll = Path.Combine(AppContext.BaseDirectory, "dotnet-quantize.dll");

    static string Manifest(TempDir dir, string model, string quantize, int samples, int length, string extra = "")
    {
        string yaml = $"version: 1\nmodel: {model}\ncalibration:\n  data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")}\n  samples: {samples}\n  sequence_length: {length}\n" +
                      $"quantize:\n{quantize}output:\n  name: out\n{extra}";
        File.WriteAllText(dir.File("quant.yaml"), yaml);
        return dir.File("quant.yaml");
    }

    static Process Start(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        return Process.Start(psi)!;
    }

    static async Task<string?> WaitForLine(Process p, string contains)
    {
        string? line;
        while ((line = await p.StandardOutput.ReadLineAsync()) is not null)
            if (line.Contains(contains)) return line;
        return null;
    }

    static List<(string, string)> Files(string folder) =>
        Directory.GetFiles(folder).Order(StringComparer.Ordinal)
            .Select(f => (Path.GetFileName(f), Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))))).ToList();

    [Fact]
    public async Task KilledAfterABlockAndResumedWritesTheSameBytes()
    {
        using var dir = new TempDir();
        // Deep enough that the kill after block 2 always lands mid-run: with 5 blocks (stories260K) the
        // process could finish the rest before the kill reached it on a loaded machine.
        string model = dir.File("deep");
        SyntheticModel.Write(model, new SyntheticModel.Spec
        {
            HiddenSize = 64, IntermediateSize = 128, Layers = 48, Heads = 4, KvHeads = 2, VocabSize = 384, MaxPositions = 256,
            TokenizerText = File.ReadAllText(SharedPaths.Data("tinystories", "stories-sample.txt")),
        });
        string manifest = Manifest(dir, model, "  method: gptaq\n  bits: 3\n  group_size: 16\n  act_order: true\n", 32, 128, "  shard_size: 200KB\n");
        Assert.Equal(0, CliRunner.Run("run", manifest, "--output", dir.File("whole"), "-v", "q").ExitCode);

        using (var p = Start("run", manifest, "--output", dir.File("killed"), "--resume", "--format", "json"))
        {
            Assert.NotNull(await WaitForLine(p, "\"event\":\"block\",\"message\":\"block 2/"));
            p.Kill(entireProcessTree: true);
            await p.WaitForExitAsync();
        }
        Assert.False(Directory.Exists(dir.File("killed/out")));
        var resumed = CliRunner.Run("run", manifest, "--output", dir.File("killed"), "--resume", "--format", "json");
        Assert.True(resumed.ExitCode == 0, resumed.Stderr);
        Assert.Contains("\"event\":\"resume\"", resumed.Stdout);
        Assert.DoesNotContain("model.layers.0.", resumed.Stdout);       // blocks 0-1 were not solved again
        Assert.Equal(Files(dir.File("whole/out")), Files(dir.File("killed/out")));
        Assert.Empty(Directory.GetDirectories(dir.File("killed"), ".out.*"));
    }

    [Fact]
    public async Task SigtermInsideALongSolveExitsWithinTwoSecondsAndKeepsThePreviousOutput()
    {
        if (!OperatingSystem.IsLinux()) return;
        using var dir = new TempDir();
        // One block whose down_proj has 8192 inputs: its statistics and factorization are single
        // libtorch calls of seconds each, which no cancellation token can interrupt.
        string model = dir.File("wide");
        SyntheticModel.Write(model, new SyntheticModel.Spec
        {
            HiddenSize = 256, IntermediateSize = 8192, Layers = 1, Heads = 4, KvHeads = 4, VocabSize = 384, MaxPositions = 512,
            TieWordEmbeddings = false, TokenizerText = File.ReadAllText(SharedPaths.Data("tinystories", "stories-sample.txt")),
        });
        string manifest = Manifest(dir, model, "  method: gptq\n  bits: 4\n  group_size: 128\n", 16, 512);
        Assert.Equal(0, CliRunner.Run("run", manifest, "-v", "q").ExitCode);
        var before = Files(dir.File("out"));

        File.WriteAllText(manifest, File.ReadAllText(manifest).Replace("bits: 4", "bits: 3"));
        using var p = Start("run", manifest, "--format", "json");
        Assert.NotNull(await WaitForLine(p, "mlp.up_proj"));                 // down_proj's statistics are next
        await Task.Delay(300);
        var sw = Stopwatch.StartNew();
        using (var kill = Process.Start("kill", ["-TERM", p.Id.ToString()])) await kill!.WaitForExitAsync();
        await p.WaitForExitAsync();
        double seconds = sw.Elapsed.TotalSeconds;
        Assert.Equal(130, p.ExitCode);
        Assert.True(seconds < 2, $"exited {seconds:F2} s after SIGTERM");
        Assert.Contains("DQ0901", await p.StandardError.ReadToEndAsync());
        Assert.Equal(before, Files(dir.File("out")));
    }
}
