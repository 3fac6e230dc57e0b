using System.Security.Cryptography;
using DotQuant.Engine.Calibration;
using DotQuant.Engine.Manifest;
using DotQuant.Tests;
using Xunit;

namespace DotQuant.Engine.Tests;

/// <summary>A run stopped after block k and resumed writes the same bytes as a run never stopped, for
/// every kind of state a run carries from block to block: the quantized stream, GPTAQ's float stream,
/// OAC's Hessians (recomputed when schedule once resumes), the rotated model in scratch, the GPTQ
/// format's v1/v2 decision and a writer cut into several shards.</summary>
public class ResumeTests
{
    static string Manifest(string quantize, string output = "") =>
        $"version: 1\nmodel: {SharedPaths.Stories260K}\ncalibration:\n  data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")}\n  samples: 12\n  sequence_length: 64\n" +
        $"quantize:\n{quantize}output:\n  name: out\n  shard_size: 96KB\n{output}" +
        $"evaluate:\n  perplexity: {{ data: {SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt")}, sequence_length: 128, max_sequences: 4 }}\n";

    [Theory]
    [InlineData("  method: gptaq\n  bits: 3\n  group_size: 16\n  compensation_aware: true\n", "", 1)]
    [InlineData("  method: spqr\n  hessian: output_adaptive\n  output_adaptive: { schedule: once }\n  rotate: hadamard\n", "", 2)]
    [InlineData("  method: gptq\n  bits: 4\n  group_size: 16\n  hessian: output_adaptive\n", "", 3)]
    [InlineData("  method: gptq\n  bits: 4\n  group_size: 16\n", "  format: gptq\n", 0)]
    [InlineData("  method: rtn\n  bits: 3\n  group_size: 16\n", "", 4)]
    public void Stopped_after_a_block_and_resumed_gives_the_same_bytes(string quantize, string output, int stopAfter)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("quant.yaml"), Manifest(quantize, output));
        var m = ManifestParser.Load(dir.File("quant.yaml"));
        var whole = QuantizeJob.Run(m, dir.File("whole"));
        Assert.Equal(0, whole.ResumedBlocks);

        using (var cts = new CancellationTokenSource())
        {
            Assert.ThrowsAny<OperationCanceledException>(() => QuantizeJob.Run(m, dir.File("stopped"), e =>
            {
                if (e is BlockEvent b && b.Block == stopAfter) cts.Cancel();
            }, cts.Token, new RunOptions { Resume = true }));
        }
        Assert.False(Directory.Exists(dir.File("stopped/out")));
        Assert.Single(Directory.GetDirectories(dir.File("stopped"), ".out.partial-*"));

        var resumed = QuantizeJob.Run(m, dir.File("stopped"), null, default, new RunOptions { Resume = true });
        Assert.Equal(stopAfter + 1, resumed.ResumedBlocks);
        Assert.Equal(whole.Before!.Perplexity, resumed.Before!.Perplexity);
        Assert.Equal(whole.After!.Perplexity, resumed.After!.Perplexity);
        Assert.Equal(Files(whole.Output), Files(resumed.Output));
        Assert.True(Directory.GetFiles(whole.Output, "model-*-of-*.safetensors").Length > 1, "the shard size should split this package");
        Assert.Empty(Directory.GetDirectories(dir.File("stopped"), ".out.*"));
    }

    /// <summary>The last window of a run: every tensor written and put into the output folder, nothing
    /// published yet. Writers that assemble one file in scratch (GGUF, ONNX's data) must leave it there,
    /// or the next process finds a checkpoint whose file is gone (a chaos trial found this with SIGTERM).</summary>
    [Theory]
    [InlineData("  method: rtn\n  bits: 4\n  group_size: 32\n", "")]
    [InlineData("  method: rtn\n", "  format: gguf\n  gguf: { type: q4_0 }\n")]
    [InlineData("  method: rtn\n  bits: 4\n  group_size: 32\n", "  format: onnx\n")]
    public void Stopped_just_before_publication_and_resumed_gives_the_same_bytes(string quantize, string output)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("quant.yaml"), Manifest(quantize, output));
        var m = ManifestParser.Load(dir.File("quant.yaml"));
        var whole = QuantizeJob.Run(m, dir.File("whole"));

        Assert.ThrowsAny<OperationCanceledException>(() => QuantizeJob.Run(m, dir.File("stopped"), null, default,
            new RunOptions { Resume = true, BeforePublish = _ => throw new OperationCanceledException("stopped at publication") }));
        Assert.False(Directory.Exists(dir.File("stopped/out")));

        var resumed = QuantizeJob.Run(m, dir.File("stopped"), null, default, new RunOptions { Resume = true });
        Assert.True(resumed.ResumedBlocks > 0);
        Assert.Equal(Files(whole.Output), Files(resumed.Output));
        Assert.Empty(Directory.GetDirectories(dir.File("stopped"), ".out.*"));
    }

    [Fact]
    public void Without_resume_a_new_run_starts_over()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("quant.yaml"), Manifest("  method: gptq\n  bits: 4\n  group_size: 16\n"));
        var m = ManifestParser.Load(dir.File("quant.yaml"));
        using (var cts = new CancellationTokenSource())
            Assert.ThrowsAny<OperationCanceledException>(() => QuantizeJob.Run(m, dir.Path, e =>
            {
                if (e is BlockEvent { Block: 2 }) cts.Cancel();
            }, cts.Token));
        var fresh = QuantizeJob.Run(m, dir.Path);
        Assert.Equal(0, fresh.ResumedBlocks);
        Assert.Equal(35, fresh.Layers.Count);
    }

    /// <summary>File name → SHA-256 of every file of a package folder.</summary>
    static List<(string, string)> Files(string folder) =>
        Directory.GetFiles(folder).Order(StringComparer.Ordinal)
            .Select(f => (Path.GetFileName(f), Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))))).ToList();
}
