using System.Text.Json.Nodes;
using DotQuant.Engine.Calibration;
using DotQuant.Engine.Manifest;
using DotQuant.Tests;
using Xunit;

namespace DotQuant.Engine.Tests;

/// <summary>Every method on stories260K gives the same tensors, bit for bit, and the same perplexities
/// (and zero-shot scores) as the recording in Golden/pipeline-pins.json (`dotquant-bench pins`). Bytes
/// are promised only between runs with the same numerics key (kernels and thread count, Torch/Numerics):
/// with the recording's key — any x86-64 AVX2 machine in portable mode at its thread count — every
/// tensor's SHA-256 and every figure must be equal; with another key (another thread count, native
/// kernels) libtorch's reductions and LAPACK round differently and move a few codes, so the figures are
/// compared with the bounds stated in <see cref="AssertClose"/> and the tensors by dtype and shape.</summary>
public class PipelinePinTests
{
    static readonly JsonNode Pins = JsonNode.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Golden", "pipeline-pins.json")))!;

    public static IEnumerable<object[]> Cases() => Pins["cases"]!.AsArray().Select(c => new object[] { (string)c!["name"]! });

    [Theory]
    [MemberData(nameof(Cases))]
    public void Same_tensors_and_perplexities_as_the_pipeline_it_replaced(string name)
    {
        var pin = Pins["cases"]!.AsArray().Single(c => (string)c!["name"]! == name)!;
        using var dir = new TempDir();
        string yaml = ((string)Pins["template"]!)
            .Replace("{MODEL}", SharedPaths.Stories260K)
            .Replace("{CALIB}", SharedPaths.Data("wikitext2-tokenized", "valid.tokens"))
            .Replace("{WIKI}", SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt"))
            .Replace("{QUANTIZE}", (string)pin["quantize"]!)
            .Replace("{FORMAT}", (string)pin["format"]!)
            .Replace("{TASKS}", (bool)pin["tasks"]! ? $"  tasks: {{ names: [piqa], dir: {SharedPaths.Data("zeroshot")}, limit: 40 }}\n" : "");
        File.WriteAllText(dir.File("quant.yaml"), yaml);
        var r = QuantizeJob.Run(ManifestParser.Load(dir.File("quant.yaml")), dir.File("build"));

        bool exact = TensorPins.Numerics() == (string)Pins["numerics"]!;
        double ppl = (double)pin["tolerance"]!["perplexity"]!, acc = (double)pin["tolerance"]!["accuracy"]!;
        AssertClose((double)pin["perplexity_before"]!, r.Before!.Perplexity, exact, ppl * Math.Abs((double)pin["perplexity_before"]!), "perplexity before");
        AssertClose((double)pin["perplexity_after"]!, r.After!.Perplexity, exact, ppl * Math.Abs((double)pin["perplexity_after"]!), "perplexity after");
        if (pin["piqa"] is { } piqa)
        {
            AssertClose((double)piqa["acc_before"]!, r.TasksBefore[0].Acc, exact, acc, "piqa acc before");
            AssertClose((double)piqa["acc_after"]!, r.TasksAfter[0].Acc, exact, acc, "piqa acc after");
            AssertClose((double)piqa["acc_norm_after"]!, r.TasksAfter[0].AccNorm!.Value, exact, acc, "piqa acc_norm after");
        }
        var expected = pin["tensors"]!.AsObject().ToDictionary(kv => kv.Key, kv => (string)kv.Value!);
        var actual = TensorPins.Of(r.Output);
        Assert.Equal(expected.Keys.Order(), actual.Keys.Order());
        if (exact)
        {
            var differing = expected.Where(kv => actual[kv.Key] != kv.Value).Select(kv => kv.Key).ToList();
            Assert.True(differing.Count == 0, $"{differing.Count} tensors differ: {string.Join(", ", differing.Take(8))}");
        }
        else
            // dtype and shape; SpQR's outlier list is as long as the outliers the numerics found (CSR), so its dtype only.
            Assert.All(expected, kv => Assert.Equal(Layout(kv.Key, kv.Value), Layout(kv.Key, actual[kv.Key])));
    }

    static string Layout(string name, string pin)
    {
        string layout = pin.Split(':')[0];
        return name.EndsWith(".outliers", StringComparison.Ordinal) ? layout[..layout.IndexOf('[')] : layout;
    }

    /// <summary>Equal under the recording's numerics; otherwise within the case's recorded bound (Pins.Tolerance
    /// in the bench: what native kernels and another thread count were measured to move).</summary>
    static void AssertClose(double expected, double actual, bool exact, double bound, string what)
    {
        if (exact) Assert.True(expected == actual, $"{what}: {actual:R}, pinned {expected:R} (same numerics: {TensorPins.Numerics()})");
        else Assert.True(Math.Abs(actual - expected) <= bound, $"{what}: {actual:R}, pinned {expected:R} ± {bound:G3} (numerics {TensorPins.Numerics()}, recorded with {Pins["numerics"]})");
    }
}
