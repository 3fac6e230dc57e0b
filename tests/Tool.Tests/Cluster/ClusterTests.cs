using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;
using DotQuant.Tests;

namespace DotQuant.Tool.Tests.Cluster;

/// <summary>Three worker processes on localhost clustering, shared by the tests of this class.</summary>
public sealed class LocalCluster : IDisposable
{
    public const int Threads = 1;
    public WorkerProcesses Workers { get; } = WorkerProcesses.Start(WorkerProcesses.Tool, $"localhost:{WorkerProcesses.FreePortPair()}", 3, Threads);
    public void Dispose() => Workers.Dispose();
}

/// <summary>`run --cluster` against real worker processes (Orleans silos) on this machine: the same
/// manifest on three workers gives the single process's result up to the order of summation, and its own
/// bytes again on a rerun; members that would compute something else are refused; a cluster nobody
/// joined is a DQ error in bounded time with nothing written. llama-tiny with 48 × 512 calibration tokens
/// is three batches: three shards.</summary>
[Collection("cluster")]
public class ClusterTests(LocalCluster cluster) : IClassFixture<LocalCluster>
{
    static string Manifest(TempDir dir, string quantize, string output = "output:\n  name: out\n")
    {
        File.WriteAllText(dir.File("quant.yaml"),
            $"version: 1\nmodel: {Path.Combine(SharedPaths.Root, "models", "llama-tiny")}\ncalibration:\n  data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")}\n  samples: 48\n  sequence_length: 512\n" +
            $"quantize:\n{quantize}{output}" +
            $"evaluate:\n  perplexity: {{ data: {SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt")}, sequence_length: 512, max_sequences: 4 }}\n");
        return dir.File("quant.yaml");
    }

    internal sealed record Run(int ExitCode, string Stdout, string Stderr, double Seconds, string Folder)
    {
        public double After => Summary().GetProperty("perplexity").GetProperty("after").GetDouble();
        JsonElement Summary() => JsonDocument.Parse(Stdout.TrimEnd().Split('\n')[^1]).RootElement;
        public IReadOnlyDictionary<string, string> Files => Directory.GetFiles(Path.Combine(Folder, "out"), "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal)
            .ToDictionary(f => Path.GetRelativePath(Folder, f), f => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))));
    }

    internal static async Task<Run> Quantize(string manifest, string folder, params string[] extra)
    {
        var sw = Stopwatch.StartNew();
        var r = await Fixtures.RunAsync("dotnet", [WorkerProcesses.Tool, "run", manifest, "--output", folder, "--threads", LocalCluster.Threads.ToString(), "--format", "json", .. extra]);
        return new Run(r.ExitCode, r.Stdout, r.Stderr, sw.Elapsed.TotalSeconds, folder);
    }

    public static TheoryData<string, string> Cases => new()
    {
        { "  method: gptq\n  bits: 4\n  group_size: 128\n", "output:\n  name: out\n" },
        { "  method: gptaq\n  bits: 2\n  group_size: 128\n  compensation_aware: true\n", "output:\n  name: out\n" },
        { "  method: rtn\n  bits: 4\n  group_size: 128\n", "output:\n  name: out\n" },
        // OAC's H̄ from one backward through the float model (schedule once: the sequential schedule's L²/2 block
        // passes tripled this test's time; bench scale-out-agreement runs it, with the single process's bytes).
        { "  method: spqr\n  hessian: output_adaptive\n  output_adaptive: { schedule: once }\n", "output:\n  name: out\n" },
        { "  method: gptq\n  bits: 3\n  group_size: 128\n  rotate: hadamard\n", "output:\n  name: out\n" },
        { "  method: gptq\n", "output:\n  name: out\n  format: gguf\n  gguf: { type: q4_k_m }\n" },
        { "  method: gptq\n  bits: 4\n  group_size: 32\n", "output:\n  name: out\n  format: onnx\n" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Three_workers_agree_with_one_process_and_repeat_their_bytes(string quantize, string output)
    {
        using var dir = new TempDir();
        string manifest = Manifest(dir, quantize, output);
        var single = await Quantize(manifest, dir.File("single"));
        Assert.True(single.ExitCode == 0, single.Stderr);
        var first = await Quantize(manifest, dir.File("first"), "--cluster", cluster.Workers.Cluster, "--workers", "3");
        Assert.True(first.ExitCode == 0, first.Stderr + "\n" + cluster.Workers.Logs);
        var second = await Quantize(manifest, dir.File("second"), "--cluster", cluster.Workers.Cluster, "--workers", "3");
        Assert.True(second.ExitCode == 0, second.Stderr + "\n" + cluster.Workers.Logs);

        Assert.Equal(first.Files.Values, second.Files.Values);
        double relative = Math.Abs(first.After / single.After - 1);
        Assert.True(relative < 5e-4, $"perplexity after: {single.After} in one process, {first.After} on three workers");
        if (!quantize.Contains("rtn"))
        {
            Assert.Contains("3 workers: shard 0", first.Stdout);
            Assert.Contains("exchanged", first.Stdout);
        }
    }

    /// <summary>Faults with their own three workers (GPTAQ, whose float stream is part of a shard's state):
    /// the coordinator killed after block 2 continues with --resume from the shards' saved states; then a
    /// worker killed (kill -9) in the middle of block 1 has its shard taken over by another worker. Both
    /// write the bytes of the undisturbed run.</summary>
    [Fact]
    public async Task A_killed_coordinator_resumes_and_a_killed_workers_shard_is_taken_over_with_the_same_bytes()
    {
        using var dir = new TempDir();
        string manifest = Manifest(dir, "  method: gptaq\n", "output:\n  name: out\n  format: gguf\n  gguf: { type: q4_k_m }\n")
            .Replace("evaluate:", "unused:");
        File.WriteAllText(manifest, File.ReadAllText(manifest).Split("unused:")[0]);
        using var workers = WorkerProcesses.Start(WorkerProcesses.Tool, $"localhost:{WorkerProcesses.FreePortPair()}", 3, LocalCluster.Threads);
        string[] cluster = ["--cluster", workers.Cluster, "--workers", "3"];
        var reference = await Quantize(manifest, dir.File("reference"), cluster);
        Assert.True(reference.ExitCode == 0, reference.Stderr + "\n" + workers.Logs);

        // The coordinator dies after block 2's resume point; --resume continues from the shards' states.
        var (killed, _) = await RunUntil(manifest, dir.File("resumed"), "\"block\":2", () => { }, killRun: true, cluster);
        Assert.NotEqual(0, killed);
        var resumed = await Quantize(manifest, dir.File("resumed"), [.. cluster, "--resume"]);
        Assert.True(resumed.ExitCode == 0, resumed.Stderr + "\n" + workers.Logs);
        Assert.Contains("resuming after block", resumed.Stdout);
        Assert.Equal(reference.Files.Values, resumed.Files.Values);

        // A worker (not the primary, which holds localhost clustering's membership) dies in block 1.
        var (exit, stdout) = await RunUntil(manifest, dir.File("taken-over"), "model.layers.1.self_attn.q_proj", () => workers.Kill(2), killRun: false, cluster);
        Assert.True(exit == 0, stdout + "\n" + workers.Logs);
        Assert.Contains("taken over by", stdout);
        // One takeover per failed call: the lost shard's calls in flight may each report one.
        Assert.Matches("[1-9][0-9]* shards? taken over", stdout);
        Assert.Equal(reference.Files.Values, new Run(0, stdout, "", 0, dir.File("taken-over")).Files.Values);
    }

    /// <summary>Starts a run, and when a line of its output contains <paramref name="marker"/> calls
    /// <paramref name="then"/> (and kill -9s the run itself if asked); returns its exit code and output.</summary>
    static async Task<(int Exit, string Stdout)> RunUntil(string manifest, string folder, string marker, Action then, bool killRun, string[] extra)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { WorkerProcesses.Tool, "run", manifest, "--output", folder, "--threads", LocalCluster.Threads.ToString(), "--format", "json" }.Concat(extra))
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        var output = new System.Text.StringBuilder();
        bool fired = false;
        string? line;
        while ((line = await p.StandardOutput.ReadLineAsync()) is not null)
        {
            output.AppendLine(line);
            if (!fired && line.Contains(marker))
            {
                fired = true;
                then();
                if (killRun) p.Kill();
            }
        }
        if (!p.WaitForExit(TimeSpan.FromMinutes(5))) p.Kill(true);
        Assert.True(fired, $"the run never printed {marker}: {output}{await stderr}");
        return (p.ExitCode, output + await stderr);
    }

    [Fact]
    public async Task A_worker_with_other_numerics_is_refused_and_nothing_is_written()
    {
        using var dir = new TempDir();
        string manifest = Manifest(dir, "  method: gptq\n  bits: 4\n  group_size: 128\n");
        var r = await Fixtures.RunAsync("dotnet", [WorkerProcesses.Tool, "run", manifest, "--output", dir.File("o"), "--threads", "2",
            "--cluster", cluster.Workers.Cluster, "--workers", "3"]);
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("DQ0186", r.Stderr);
        Assert.Contains("threads=1", r.Stderr);
        Assert.False(Directory.Exists(dir.File("o/out")));
    }

    [Fact]
    public async Task A_worker_with_another_checkpoint_is_refused()
    {
        using var dir = new TempDir();
        // The worker's copy of llama-tiny differs in one file (as a stale copy on another machine would).
        string models = dir.File("models");
        string copy = Path.Combine(models, "llama-tiny");
        Directory.CreateDirectory(copy);
        foreach (var f in Directory.GetFiles(Path.Combine(SharedPaths.Root, "models", "llama-tiny")))
            File.Copy(f, Path.Combine(copy, Path.GetFileName(f)));
        File.AppendAllText(Path.Combine(copy, "config.json"), "\n");
        using var other = WorkerProcesses.Start(WorkerProcesses.Tool, $"localhost:{WorkerProcesses.FreePortPair()}", 1, LocalCluster.Threads, models);
        string manifest = Manifest(dir, "  method: gptq\n  bits: 4\n  group_size: 128\n");
        var r = await Quantize(manifest, dir.File("o"), "--cluster", other.Cluster, "--workers", "1");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("DQ0186", r.Stderr);
        Assert.Contains("config.json", r.Stderr);
        Assert.False(Directory.Exists(dir.File("o/out")));
    }

    [Fact]
    public async Task No_worker_is_a_DQ_error_within_the_timeout_and_nothing_is_written()
    {
        using var dir = new TempDir();
        string manifest = Manifest(dir, "  method: gptq\n  bits: 4\n  group_size: 128\n");
        var sw = Stopwatch.StartNew();
        var r = await Quantize(manifest, dir.File("o"), "--cluster", $"localhost:{WorkerProcesses.FreePortPair()}", "--cluster-timeout", "5");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("DQ0185", r.Stderr);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(60), $"{sw.Elapsed.TotalSeconds:F0} s");
        Assert.False(Directory.Exists(dir.File("o")) && Directory.EnumerateFileSystemEntries(dir.File("o")).Any());
    }

    [Theory]
    [InlineData("localhost:0")]
    [InlineData("redis://")]
    [InlineData("tcp://host:1")]
    public void A_malformed_cluster_address_is_DQ0184(string address)
    {
        using var dir = new TempDir();
        var r = CliRunner.Run("run", Manifest(dir, "  method: rtn\n"), "--cluster", address);
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("DQ0184", r.Stderr);
    }

    /// <summary>Mutual TLS: a worker that presents the cluster's certificate serves a coordinator that
    /// presents it too; a coordinator without it cannot reach the worker (DQ0185, nothing written).</summary>
    [Fact]
    public async Task Tls_members_talk_and_a_member_without_the_certificate_cannot()
    {
        using var dir = new TempDir();
        using (var key = System.Security.Cryptography.RSA.Create(2048))
        {
            var request = new System.Security.Cryptography.X509Certificates.CertificateRequest("CN=dotquant-cluster", key,
                System.Security.Cryptography.HashAlgorithmName.SHA256, System.Security.Cryptography.RSASignaturePadding.Pkcs1);
            using var cert = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
            File.WriteAllBytes(dir.File("cluster.pfx"), cert.Export(System.Security.Cryptography.X509Certificates.X509ContentType.Pkcs12, "secret"));
        }
        string manifest = Manifest(dir, "  method: gptq\n  bits: 4\n  group_size: 128\n");
        string address = $"localhost:{WorkerProcesses.FreePortPair()}";
        using var workers = WorkerProcesses.Start(WorkerProcesses.Tool, address, 1, LocalCluster.Threads, extra: ["--tls-certificate", dir.File("cluster.pfx"), "--tls-password", "secret"]);
        Assert.Contains("TLS", workers.Log(0));
        var with = await Quantize(manifest, dir.File("with"), "--cluster", address, "--workers", "1", "--tls-certificate", dir.File("cluster.pfx"), "--tls-password", "secret");
        Assert.True(with.ExitCode == 0, with.Stderr + "\n" + workers.Logs);
        var without = await Quantize(manifest, dir.File("without"), "--cluster", address, "--workers", "1", "--cluster-timeout", "10");
        Assert.Equal(1, without.ExitCode);
        Assert.Contains("DQ0185", without.Stderr);
        Assert.False(Directory.Exists(dir.File("without/out")));
    }

    [Fact]
    public async Task Redis_membership_gives_the_bytes_of_localhost_membership()
    {
        using var dir = new TempDir();
        string manifest = Manifest(dir, "  method: gptq\n  bits: 4\n  group_size: 128\n");
        using var redis = RedisServer.Start();
        using var workers = WorkerProcesses.Start(WorkerProcesses.Tool, redis.Address, 3, LocalCluster.Threads);
        var viaRedis = await Quantize(manifest, dir.File("redis"), "--cluster", redis.Address, "--workers", "3");
        Assert.True(viaRedis.ExitCode == 0, viaRedis.Stderr + "\n" + workers.Logs);
        var viaLocalhost = await Quantize(manifest, dir.File("localhost"), "--cluster", cluster.Workers.Cluster, "--workers", "3");
        Assert.True(viaLocalhost.ExitCode == 0, viaLocalhost.Stderr);
        Assert.Equal(viaLocalhost.Files.Values, viaRedis.Files.Values);
    }
}
