using DotQuant.Engine.Calibration;
using DotQuant.Engine.Distributed;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Formats;
using DotQuant.Tests;
using Xunit;

namespace DotQuant.Engine.Tests;

/// <summary>The distributed algorithm without a transport (InProcessCluster): the calibration sequences
/// sharded on batch boundaries, each shard's statistics summed apart and added in fp64. One shard is the
/// single process bit for bit; three agree with it up to summation order and repeat their own bytes.</summary>
public class ShardedCalibrationTests
{
    // 96 × 256 tokens are three batches of 32 sequences: three shards.
    static string Manifest(string quantize, string output = "") =>
        $"version: 1\nmodel: {SharedPaths.Stories260K}\ncalibration:\n  data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")}\n  samples: 96\n  sequence_length: 256\n" +
        $"quantize:\n{quantize}output:\n  name: out\n{output}evaluate:\n  perplexity:\n    data: {SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt")}\n    sequence_length: 256\n    max_sequences: 16\n";

    [Fact]
    public void Shards_follow_the_batches_and_cover_every_sequence_in_order()
    {
        var sequences = Enumerable.Range(0, 96).Select(i => Enumerable.Repeat((long)i, 256).ToArray()).ToList();
        var plan = ShardPlan.Split(sequences, 3);
        Assert.Equal(3, plan.Count);
        Assert.All(plan.Shards, s => Assert.Equal(32, s.Count));
        Assert.Equal(sequences, plan.Shards.SelectMany(s => s));
        Assert.Equal(2, ShardPlan.Split(sequences, 2).Count);
        Assert.Equal(3, ShardPlan.Split(sequences, 8).Count);     // never more shards than batches
        var two = ShardPlan.Split(sequences, 2);
        Assert.Equal([64, 32], two.Shards.Select(s => s.Count));
    }

    static JobResult Run(TempDir dir, string quantize, string folder, int? shards, string output = "", bool solveOnCoordinator = false, InProcessCluster? cluster = null)
    {
        string manifest = dir.File(folder + ".yaml");
        File.WriteAllText(manifest, Manifest(quantize, output));
        cluster ??= shards is int n ? new InProcessCluster(n, dir.File(folder + "-shards")) : null;
        var options = cluster is not null ? new RunOptions { Cluster = cluster, SolveOnCoordinator = solveOnCoordinator } : null;
        return QuantizeJob.Run(ManifestParser.Load(manifest), dir.File(folder), options: options);
    }

    static byte[] Weights(JobResult r) => File.ReadAllBytes(Path.Combine(r.Output, "model.safetensors"));

    [Theory]
    [InlineData("  method: gptq\n  bits: 4\n  group_size: 16\n")]
    [InlineData("  method: gptaq\n  bits: 2\n  group_size: 16\n  compensation_aware: true\n")]
    [InlineData("  method: gptq\n  bits: 3\n  group_size: 16\n  rotate: hadamard\n")]
    [InlineData("  method: spqr\n  hessian: output_adaptive\n")]
    [InlineData("  method: gptq\n  bits: 3\n  group_size: 16\n  hessian: output_adaptive\n  output_adaptive: { schedule: sequential_groups, labels: sampled, seed: 5 }\n")]
    public void One_shard_is_the_single_process_and_three_agree_with_it(string quantize)
    {
        using var dir = new TempDir();
        var single = Run(dir, quantize, "single", null);
        var one = Run(dir, quantize, "one", 1);
        Assert.Equal(Weights(single), Weights(one));

        var three = Run(dir, quantize, "three", 3);
        var again = Run(dir, quantize, "again", 3);
        Assert.Equal(Weights(three), Weights(again));
        double relative = Math.Abs(three.After!.Perplexity / single.After!.Perplexity - 1);
        Assert.True(relative < 5e-4, $"perplexity {single.After.Perplexity} single, {three.After.Perplexity} with three shards");
        // Per layer, the calibration losses agree (the statistics differ by summation order only).
        foreach (var (a, b) in single.Layers.Zip(three.Layers).Where(p => p.First.Quantized))
            Assert.True(Math.Abs(b.Loss / a.Loss - 1) < 1e-3, $"{a.Name}: loss {a.Loss} vs {b.Loss}");
    }

    /// <summary>A group's solves spread over the shards' workers (statistics out, solved linears back in
    /// their wire form, then to every worker) write what solving them all on the coordinator writes, for
    /// every kind of solved linear.</summary>
    [Theory]
    [InlineData("  method: gptq\n  bits: 4\n  group_size: 16\n  act_order: true\n", "")]
    [InlineData("  method: gptaq\n  bits: 2\n  group_size: 16\n  compensation_aware: true\n", "")]
    [InlineData("  method: spqr\n  hessian: output_adaptive\n  output_adaptive: { schedule: once }\n", "")]
    [InlineData("  method: billm\n", "")]
    [InlineData("  method: gptq\n", "  format: gguf\n  gguf: { type: q4_0 }\n")]
    public void Solves_spread_over_the_workers_write_the_bytes_of_solves_on_the_coordinator(string quantize, string output)
    {
        using var dir = new TempDir();
        var coordinator = new InProcessCluster(3, dir.File("here-shards"));
        var workers = new InProcessCluster(3, dir.File("spread-shards"));
        var here = Run(dir, quantize, "here", 3, output, solveOnCoordinator: true, cluster: coordinator);
        var spread = Run(dir, quantize, "spread", 3, output, cluster: workers);
        Assert.All(coordinator.SolvedOnWorkers, n => Assert.Equal(0, n));
        // q/k/v and gate/up are spread (longest first); o and down, alone in their groups, stay on the coordinator.
        Assert.All(workers.SolvedOnWorkers, n => Assert.True(n > 0, $"solved on the workers: {string.Join(", ", workers.SolvedOnWorkers)}"));
        var files = Directory.GetFiles(here.Output).Select(Path.GetFileName).Where(f => f!.EndsWith(".safetensors") || f.EndsWith(".gguf")).ToList();
        Assert.NotEmpty(files);
        foreach (var f in files)
            Assert.Equal(File.ReadAllBytes(Path.Combine(here.Output, f!)), File.ReadAllBytes(Path.Combine(spread.Output, f!)));
        Assert.Equal(here.Layers.Select(l => l.Loss), spread.Layers.Select(l => l.Loss));
    }

    [Fact]
    public void Sampled_labels_are_seeded_by_the_sequences_number_in_the_run_not_in_its_shard()
    {
        var sequences = Enumerable.Range(0, 96).Select(i => new long[256]).ToList();
        var plan = ShardPlan.Split(sequences, 3);
        Assert.Equal([0, 32, 64], Enumerable.Range(0, 3).Select(plan.FirstSequence));
        // A worker's plan holds its own shard only, numbered as in the run.
        Assert.Equal(64, new ShardPlan([plan.Shards[2]], plan.FirstSequence(2)).FirstSequence(0));
    }
}
