using System.Diagnostics;
using System.Security.Cryptography;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using DotQuant.Tests;
using static TorchSharp.torch;

namespace DotQuant.Tool.Tests;

public class RunCommandTests
{
    static readonly string Calib = SharedPaths.Data("wikitext2-tokenized", "valid.tokens");
    static readonly string Wiki = SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt");

    static string Manifest(TempDir dir, string quantize, string output = "  name: out\n", string extra = "")
    {
        string yaml = $"version: 1\nmodel: {SharedPaths.Stories260K}\ncalibration:\n  data: {Calib}\n  samples: 16\n  sequence_length: 128\n  seed: 0\nquantize:\n{quantize}output:\n{output}{extra}";
        File.WriteAllText(dir.File("quant.yaml"), yaml);
        return dir.File("quant.yaml");
    }

    const string Evaluate = "evaluate:\n  perplexity: { data: WIKI, sequence_length: 512, max_sequences: 8 }\n";

    [Fact]
    public void GptqExportDequantizedIndependentlyEqualsTheEvaluatedWeights()
    {
        using var dir = new TempDir();
        string manifest = Manifest(dir, "  method: gptq\n  bits: 4\n  group_size: 16\n  symmetric: true\n",
            "  name: w4g16\n  format: gptq\n", Evaluate.Replace("WIKI", Wiki));
        var r = CliRunner.Run("run", manifest, "--format", "json");
        Assert.True(r.ExitCode == 0, r.Stderr + r.Stdout);
        var summary = r.LastJson();
        string output = summary.GetProperty("output").GetString()!;
        double after = summary.GetProperty("perplexity").GetProperty("after").GetDouble();

        // The exported checkpoint, read by DotQuant's GPTQ loader, evaluates to the same perplexity.
        var eval = CliRunner.Run("eval", output, "--data", Wiki, "--sequence-length", "512", "--max-windows", "8", "--format", "json");
        Assert.True(eval.ExitCode == 0, eval.Stderr);
        Assert.Equal(after, eval.LastJson().GetProperty("perplexity").GetDouble());

        // An independent dequantization of the int32 tensors (spec §7, v1 zeros) equals the weights
        // the engine loads for every quantized linear.
        using var ckpt = Checkpoint.Open(output);
        using var model = ModelLoader.Load(output);
        int checkedLayers = 0;
        for (int b = 0; b < model.BlockCount; b++)
            foreach (var lin in model.LoadBlock(b).Linears)
            {
                if (!ckpt.Contains(lin.Name + ".qweight")) { Assert.True(ckpt.Contains(lin.Name + ".weight")); continue; }
                using var expected = IndependentDequantize(ckpt, lin.Name, (int)lin.InFeatures, (int)lin.OutFeatures);
                Assert.True(expected.eq(lin.Weight).all().item<bool>(), lin.Name);
                checkedLayers++;
            }
        Assert.Equal(5 * 4, checkedLayers);     // q/k/v/o pack; 172-wide MLP linears cannot and stay float
        string config = File.ReadAllText(Path.Combine(output, "config.json"));
        Assert.Contains("\"quant_method\": \"gptq\"", config);
        Assert.True(File.Exists(Path.Combine(output, "quantize_config.json")));
    }

    /// <summary>w[r, k] = scale[g, r] · (q[k, r] − (z[g, r] + 1)), g = g_idx[k], 4-bit nibbles low first.</summary>
    static Tensor IndependentDequantize(Checkpoint ckpt, string prefix, int n, int m)
    {
        var qweight = ckpt.Load(prefix + ".qweight").data<int>().ToArray();
        var qzeros = ckpt.Load(prefix + ".qzeros").data<int>().ToArray();
        var scales = ckpt.Load(prefix + ".scales").to(ScalarType.Float32).data<float>().ToArray();
        var gIdx = ckpt.Load(prefix + ".g_idx").data<int>().ToArray();
        int zeroWords = m / 8;
        var w = new float[m * n];
        for (int r = 0; r < m; r++)
            for (int k = 0; k < n; k++)
            {
                int g = gIdx[k];
                int q = (qweight[(k / 8) * m + r] >> (4 * (k % 8))) & 0xF;
                int z = ((qzeros[g * zeroWords + r / 8] >> (4 * (r % 8))) & 0xF) + 1;
                w[r * n + k] = (q - z) * scales[g * m + r];
            }
        return tensor(w, [m, n]);
    }

    [Fact]
    public void SameInputsGiveByteIdenticalOutput()
    {
        using var dir = new TempDir();
        string manifest = Manifest(dir, "  method: gptaq\n  bits: 3\n  group_size: 16\n  act_order: true\n");
        Assert.Equal(0, CliRunner.Run("run", manifest, "--output", dir.File("a"), "-v", "q").ExitCode);
        Assert.Equal(0, CliRunner.Run("run", manifest, "--output", dir.File("b"), "-v", "q").ExitCode);
        foreach (var f in new[] { "model.safetensors", "dotquant.json", "config.json" })
            Assert.Equal(SHA256.HashData(File.ReadAllBytes(Path.Combine(dir.File("a"), "out", f))),
                         SHA256.HashData(File.ReadAllBytes(Path.Combine(dir.File("b"), "out", f))));
    }

    [Fact]
    public void ManifestErrorsAreUserErrorsWithFileLineColumn()
    {
        using var dir = new TempDir();
        string bad = Manifest(dir, "  method: gptq\n  bitz: 4\n");
        var r = CliRunner.Run("run", bad);
        Assert.Equal(1, r.ExitCode);
        Assert.Contains($"{bad}(10,3): error DQ0002:", r.Stderr);

        string missing = Manifest(dir, "  method: gptq\n");
        File.WriteAllText(missing, File.ReadAllText(missing).Replace(Calib, "./nowhere.txt"));
        r = CliRunner.Run("run", missing);
        Assert.Equal(1, r.ExitCode);
        Assert.Contains($"{missing}(4,9): error DQ0151:", r.Stderr);

        string impossible = Manifest(dir, "  method: rtn\n  compensation_aware: true\n");
        r = CliRunner.Run("run", impossible);
        Assert.Equal(1, r.ExitCode);
        Assert.Matches($@"{System.Text.RegularExpressions.Regex.Escape(impossible)}\(10,\d+\): error DQ0006:", r.Stderr);

        File.WriteAllText(bad, "version: 1\nmodel: [unclosed\n");
        r = CliRunner.Run("run", bad);
        Assert.Equal(1, r.ExitCode);
        Assert.Matches(@"quant\.yaml\(\d+,\d+\): error DQ0001:", r.Stderr);
    }

    [Fact]
    public void QualityGateFailureExitsWith2()
    {
        using var dir = new TempDir();
        string manifest = Manifest(dir, "  method: rtn\n  bits: 2\n  group_size: -1\n", extra:
            Evaluate.Replace("WIKI", Wiki) + "  gate: { max_perplexity_increase: 1% }\n");
        var r = CliRunner.Run("run", manifest, "--format", "json");
        Assert.Equal(2, r.ExitCode);
        var summary = r.LastJson();
        Assert.Equal("failed", summary.GetProperty("gate").GetString());
        Assert.Matches(@"quant\.yaml: error DQ0170: quality gate failed: perplexity \d+\.\d+ \(float\) -> \d+\.\d+ \(quantized\) exceeds the allowed \+1%", r.Stderr);

        // The package is still written, and eval of it reproduces the "after" figure exactly.
        var eval = CliRunner.Run("eval", summary.GetProperty("output").GetString()!, "--data", Wiki, "--sequence-length", "512", "--max-windows", "8", "--format", "json");
        Assert.Equal(0, eval.ExitCode);
        Assert.Equal(summary.GetProperty("perplexity").GetProperty("after").GetDouble(), eval.LastJson().GetProperty("perplexity").GetDouble());
        Assert.True(summary.GetProperty("perplexity").GetProperty("after").GetDouble() > summary.GetProperty("perplexity").GetProperty("before").GetDouble());
    }

    [Fact]
    public void CacheHitSkipsWorkAndKeepsTheGateVerdict()
    {
        using var dir = new TempDir();
        string cache = dir.File("cache");
        string manifest = Manifest(dir, "  method: rtn\n  bits: 2\n  group_size: -1\n", extra:
            Evaluate.Replace("WIKI", Wiki) + "  gate: { max_perplexity_increase: 1% }\n");
        var first = CliRunner.Run("run", manifest, "--cache-dir", cache, "--format", "json");
        Assert.Equal(2, first.ExitCode);
        Assert.False(first.LastJson().GetProperty("cached").GetBoolean());
        var second = CliRunner.Run("run", manifest, "--cache-dir", cache, "--format", "json");
        Assert.Equal(2, second.ExitCode);                  // a cached failure still fails
        Assert.True(second.LastJson().GetProperty("cached").GetBoolean());
        Assert.Contains("DQ0170", second.Stderr);
        Assert.Equal(first.LastJson().GetProperty("output").GetString(), second.LastJson().GetProperty("output").GetString());

        // A changed input is a different entry; with --require-cache it is an error, not work.
        File.WriteAllText(manifest, File.ReadAllText(manifest).Replace("bits: 2", "bits: 3"));
        var miss = CliRunner.Run("run", manifest, "--cache-dir", cache, "--require-cache");
        Assert.Equal(1, miss.ExitCode);
        Assert.Contains("error DQ0160", miss.Stderr);
    }

    [Fact]
    public void AMemoryPlanOverTheLimitIsRefusedBeforeAnyWork()
    {
        using var dir = new TempDir();
        string manifest = Manifest(dir, "  method: gptq\n  bits: 4\n  group_size: 16\n");
        var r = CliRunner.Run("run", manifest, "--max-memory", "100M", "--format", "json");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("error DQ0154: memory plan: peak", r.Stderr);
        Assert.Contains("\"event\":\"memory\"", r.Stdout);
        Assert.DoesNotContain("\"event\":\"layer\"", r.Stdout);
        Assert.False(Directory.Exists(dir.File("out")));
        Assert.Equal(1, CliRunner.Run("run", manifest, "--max-memory", "lots").ExitCode);
        Assert.Equal(0, CliRunner.Run("run", manifest, "--max-memory", "8G", "-v", "q").ExitCode);
    }

    [Fact]
    public void GateIsJudgedAgainOnACacheHit()
    {
        using var dir = new TempDir();
        string cache = dir.File("cache");
        string Gate(string limit) => Manifest(dir, "  method: rtn\n  bits: 2\n  group_size: -1\n", extra:
            Evaluate.Replace("WIKI", Wiki) + $"  gate: {{ max_perplexity_increase: {limit} }}\n");
        var first = CliRunner.Run("run", Gate("1%"), "--cache-dir", cache, "--format", "json");
        Assert.Equal(2, first.ExitCode);
        double before = first.LastJson().GetProperty("perplexity").GetProperty("before").GetDouble();
        double after = first.LastJson().GetProperty("perplexity").GetProperty("after").GetDouble();
        double needed = (after / before - 1) * 100;

        // The gate is not part of the cache key: the same entry, judged by the gate as it is now.
        var raised = CliRunner.Run("run", Gate($"{Math.Ceiling(needed) + 1}%"), "--cache-dir", cache, "--format", "json");
        Assert.True(raised.ExitCode == 0, raised.Stderr);
        Assert.True(raised.LastJson().GetProperty("cached").GetBoolean());
        Assert.Equal("passed", raised.LastJson().GetProperty("gate").GetString());
        Assert.Equal(after, raised.LastJson().GetProperty("perplexity").GetProperty("after").GetDouble());

        var lowered = CliRunner.Run("run", Gate($"{Math.Floor(needed) - 1}%"), "--cache-dir", cache, "--format", "json");
        Assert.Equal(2, lowered.ExitCode);
        Assert.True(lowered.LastJson().GetProperty("cached").GetBoolean());
        Assert.Contains("DQ0170", lowered.Stderr);
        Assert.Single(Directory.GetDirectories(cache));
        // The package records measurements, not a verdict.
        string entry = Path.Combine(Directory.GetDirectories(cache)[0], "out");
        Assert.DoesNotContain("\"gate\"", File.ReadAllText(Path.Combine(entry, "dotquant.json")));
    }

    [Fact]
    public async Task TwoRunsRacingOnOneCacheEntryBothSucceedWithOneIntactEntry()
    {
        using var dir = new TempDir();
        string manifest = Manifest(dir, "  method: gptq\n  bits: 4\n  group_size: 16\n");
        string cache = dir.File("cache");
        string dll = Path.Combine(AppContext.BaseDirectory, "dotnet-quantize.dll");
        var runs = await Task.WhenAll(Enumerable.Range(0, 2).Select(_ =>
            Fixtures.RunAsync("dotnet", dll, "run", manifest, "--cache-dir", cache, "--format", "json")));
        Assert.All(runs, r => Assert.True(r.ExitCode == 0, r.Stderr));
        var entries = Directory.GetDirectories(cache);
        Assert.Single(entries);
        Assert.Equal(new[] { "out" }, Directory.GetDirectories(entries[0]).Select(Path.GetFileName));
        // The surviving entry is complete and loads.
        var eval = CliRunner.Run("eval", Path.Combine(entries[0], "out"), "--data", Wiki, "--max-windows", "2", "--format", "json");
        Assert.Equal(0, eval.ExitCode);
    }

    [Fact]
    public async Task KilledRunLeavesThePreviousOutputIntact()
    {
        using var dir = new TempDir();
        string manifest = Manifest(dir, "  method: gptaq\n  bits: 4\n  group_size: 16\n");
        Assert.Equal(0, CliRunner.Run("run", manifest, "-v", "q").ExitCode);
        string output = Path.Combine(dir.Path, "out");
        var before = Directory.GetFiles(output).Order().Select(f => (Path.GetFileName(f), Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))))).ToList();

        // Same output name, different settings, killed part-way through calibration.
        File.WriteAllText(manifest, File.ReadAllText(manifest).Replace("bits: 4", "bits: 3").Replace("samples: 16", "samples: 64"));
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "dotnet-quantize.dll"), "run", manifest, "--format", "json" })
            psi.ArgumentList.Add(a);
        using (var p = Process.Start(psi)!)
        {
            string? line;
            while ((line = await p.StandardOutput.ReadLineAsync()) is not null)
                if (line.Contains("\"index\":5,")) break;
            Assert.NotNull(line);
            p.Kill(entireProcessTree: true);
            await p.WaitForExitAsync();
        }
        var after = Directory.GetFiles(output).Order().Select(f => (Path.GetFileName(f), Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))))).ToList();
        Assert.Equal(before, after);

        // The next run sweeps the killed run's temp folder and replaces the output.
        Assert.Equal(0, CliRunner.Run("run", manifest, "-v", "q").ExitCode);
        Assert.Empty(Directory.GetDirectories(dir.Path, ".out.*"));
        Assert.Contains("\"bits\": 3", File.ReadAllText(Path.Combine(output, "dotquant.json")));
    }
}
