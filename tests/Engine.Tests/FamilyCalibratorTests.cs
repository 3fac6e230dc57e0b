using System.Text.Json.Nodes;
using DotQuant.Engine.Calibration;
using DotQuant.Engine.Evaluation;
using DotQuant.Engine.Formats;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;
using DotQuant.Tests;

namespace DotQuant.Engine.Tests;

/// <summary>Every calibrator on every family beyond Llama (synthetic checkpoints with a byte-level vocabulary):
/// a DotQuant package whose linears are the family's (fused ones as one), that the runtime reads back to
/// exactly the weights the run evaluated, and zero-shot scoring through the family's forward.</summary>
public class FamilyCalibratorTests
{
    static readonly string Sample = File.ReadAllText(SharedPaths.Data("tinystories", "stories-sample.txt"));

    public static TheoryData<string, string> Cases()
    {
        var data = new TheoryData<string, string>();
        string[] methods =
        [
            "  method: rtn\n",
            "  method: gptq\n  act_order: true\n  bits: 4\n  group_size: 16\n",
            "  method: gptaq\n  compensation_aware: true\n  bits: 4\n  group_size: 16\n",
            "  method: gptq\n  hessian: output_adaptive\n  bits: 4\n  group_size: 16\n",
            "  method: spqr\n",
            "  method: billm\n",
        ];
        foreach (var family in SyntheticFamilies.Names)
            foreach (var m in methods)
                data.Add(family, m);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void EveryCalibratorRunsOnEveryFamily(string family, string quantize)
    {
        using var dir = new TempDir();
        string folder = dir.File(family);
        SyntheticModel.Write(folder, SyntheticFamilies.Spec(family, tokenizerText: Sample));
        string eval = SharedPaths.Data("tinystories", "valid-excerpt.txt");
        File.WriteAllText(dir.File("quant.yaml"),
            $"version: 1\nmodel: {folder}\ncalibration:\n  data: {SharedPaths.Data("tinystories", "stories-sample.txt")}\n  samples: 8\n  sequence_length: 64\n" +
            $"quantize:\n{quantize}" +
            $"output:\n  name: out\nevaluate:\n  perplexity: {{ data: {eval}, sequence_length: 64, max_sequences: 4 }}\n");
        var result = QuantizeJob.Run(ManifestParser.Load(dir.File("quant.yaml")), dir.File("build"));

        using var source = ModelLoader.Open(folder);
        int linears = Enumerable.Range(0, source.BlockCount).Sum(b => source.LinearLayout(b).Sum(g => g.Count));
        var info = JsonNode.Parse(File.ReadAllText(Path.Combine(result.Output, QuantizedPackage.ManifestFile)))!;
        Assert.Equal(linears, info["layers"]!.AsArray().Count(l => (bool)l!["quantized"]!));

        var ids = HfTokenizer.Load(result.Output).Encode(File.ReadAllText(eval));
        using var model = ModelLoader.Load(result.Output);
        Assert.Equal(result.After!.Perplexity, Perplexity.Windows(model, ids, 64, 4).Perplexity);
        Assert.NotEqual(result.Before!.Perplexity, result.After.Perplexity);

        // Zero-shot scoring goes through the family's forward block by block; every log-likelihood is finite.
        var task = ZeroShotTask.Load("copa", SharedPaths.Data("zeroshot"), limit: 4);
        var scores = ZeroShot.LogLikelihoods(model, HfTokenizer.Load(result.Output), task);
        Assert.All(scores.SelectMany(d => d), s => Assert.True(double.IsFinite(s.LogLikelihood) && s.LogLikelihood < 0));
    }
}
