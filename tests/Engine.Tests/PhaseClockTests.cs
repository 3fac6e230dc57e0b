using System.Diagnostics;
using DotQuant.Engine.Calibration;
using DotQuant.Engine.Manifest;
using DotQuant.Tests;

namespace DotQuant.Engine.Tests;

/// <summary>The run's time by phase: exclusive (a nested phase is not counted twice), complete (with
/// "other" the phases add up to the run), and naming what GPTQ does.</summary>
public class PhaseClockTests
{
    [Fact]
    public void NestedPhasesAreCountedOnceAndAddUpToTheOuterOne()
    {
        var (clock, scope) = PhaseClock.Start();
        var outer = Stopwatch.StartNew();
        using (scope)
        {
            using (PhaseClock.Measure("solve"))
            {
                Thread.Sleep(20);
                using (PhaseClock.Measure("factorization")) Thread.Sleep(20);
                using (PhaseClock.Measure("factorization")) Thread.Sleep(10);
            }
        }
        double elapsed = outer.Elapsed.TotalSeconds;
        var s = clock.Seconds;
        Assert.Equal(["solve", "factorization"], s.Keys.OrderBy(k => k == "factorization"));
        Assert.True(s["factorization"] >= 0.03 && s["solve"] >= 0.02);
        // Exclusive: the phases never add up to more than the wall time that contains them (counting the
        // factorization inside the solve too would). No lower bound on scheduling delays: a loaded
        // machine may stall the thread between phases.
        Assert.InRange(s.Values.Sum(), 0.05, elapsed);
        using (PhaseClock.Measure("after the run")) { }
        Assert.DoesNotContain("after the run", clock.Seconds.Keys);
    }

    [Fact]
    public void A_gptq_run_reports_where_its_time_went()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("quant.yaml"),
            $"version: 1\nmodel: {SharedPaths.Stories260K}\ncalibration:\n  data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")}\n  samples: 8\n  sequence_length: 64\n" +
            $"quantize:\n  method: gptq\n  bits: 4\n  group_size: 16\noutput:\n  name: out\nevaluate:\n  perplexity: {{ data: {SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt")}, sequence_length: 64, max_sequences: 4 }}\n  rtn_baseline: true\n");
        var r = QuantizeJob.Run(ManifestParser.Load(dir.File("quant.yaml")), dir.File("out"));
        foreach (var phase in new[] { "evaluation", "calibration data", "load", "capture", "xtx", "rtn baseline", "factorization", "solve", "advance", "write", "other" })
            Assert.True(r.Phases.TryGetValue(phase, out double s) && s >= 0, $"phase {phase}: {string.Join(", ", r.Phases)}");
        Assert.Equal(r.Seconds, r.Phases.Values.Sum(), 6);
    }
}

/// <summary>Round-to-nearest's comparison loss is measured only when the manifest asks for it, and
/// asking changes nothing but the rtn_loss figures.</summary>
public class RtnBaselineTests
{
    [Fact]
    public void The_rtn_loss_is_measured_only_when_asked_for_and_the_weights_do_not_change()
    {
        using var dir = new TempDir();
        string Manifest(bool ask)
        {
            string path = dir.File($"quant-{ask}.yaml");
            File.WriteAllText(path,
                $"version: 1\nmodel: {SharedPaths.Stories260K}\ncalibration:\n  data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")}\n  samples: 8\n  sequence_length: 64\n" +
                $"quantize:\n  method: gptq\n  bits: 4\n  group_size: 16\noutput:\n  name: out\n" + (ask ? "evaluate:\n  rtn_baseline: true\n" : ""));
            return path;
        }
        var without = QuantizeJob.Run(ManifestParser.Load(Manifest(false)), dir.File("without"));
        var with = QuantizeJob.Run(ManifestParser.Load(Manifest(true)), dir.File("with"));
        Assert.All(without.Layers.Where(l => l.Quantized), l => Assert.True(double.IsNaN(l.RtnLoss), l.Name));
        Assert.DoesNotContain("rtn baseline", without.Phases.Keys);
        Assert.All(with.Layers.Where(l => l.Quantized), l => Assert.True(l.RtnLoss > 0 && double.IsFinite(l.RtnLoss), $"{l.Name}: RTN {l.RtnLoss}"));
        Assert.Equal(without.Layers.Where(l => l.Quantized).Select(l => l.Loss), with.Layers.Where(l => l.Quantized).Select(l => l.Loss));
        foreach (var file in Directory.GetFiles(without.Output).Select(Path.GetFileName).Where(f => f != "dotquant.json"))
            Assert.Equal(File.ReadAllBytes(Path.Combine(without.Output, file!)), File.ReadAllBytes(Path.Combine(with.Output, file!)));
        Assert.DoesNotContain("rtn_loss", File.ReadAllText(Path.Combine(without.Output, "dotquant.json")));
        Assert.Contains("rtn_loss", File.ReadAllText(Path.Combine(with.Output, "dotquant.json")));
    }
}
