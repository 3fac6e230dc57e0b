using DotQuant.Runtime;
using DotQuant.Engine.Manifest;
using DotQuant.Tests;

namespace DotQuant.Engine.Tests;

public class ManifestTests
{
    static readonly string Model = SharedPaths.Stories260K;
    static readonly string Calib = SharedPaths.Data("wikitext2-tokenized", "valid.tokens");

    static string Valid(string quantize = "  method: gptq\n  bits: 4\n  group_size: 16\n") =>
        $"version: 1\nmodel: {Model}\ncalibration:\n  data: {Calib}\n  samples: 8\n  sequence_length: 64\nquantize:\n{quantize}output:\n  name: out\n";

    static DotQuantException Fails(string yaml) =>
        Assert.Throws<DotQuantException>(() => ManifestParser.Parse(yaml, "/work/app/quant.yaml"));

    [Fact]
    public void ParsesAValidManifestWithDefaults()
    {
        var m = ManifestParser.Parse(Valid(), "/work/app/quant.yaml");
        Assert.Equal(QuantMethod.Gptq, m.Quantize.Method);
        Assert.Equal(16, m.Quantize.GroupSize);
        Assert.Equal(0.01, m.Quantize.Damp);
        Assert.False(m.Quantize.Symmetric);
        Assert.Equal(8, m.Calibration!.Samples);
        Assert.Equal(0L, m.Calibration.Seed);
        Assert.Equal(OutputFormat.DotQuant, m.Output.Format);
    }

    [Fact]
    public void RelativePathsResolveAgainstTheManifestFolder()
    {
        using var dir = new TempDir();
        Directory.CreateDirectory(Path.Combine(dir.Path, "models"));
        File.WriteAllText(dir.File("calib.txt"), "text");
        var yaml = "version: 1\nmodel: ./models\ncalibration:\n  data: calib.txt\nquantize:\n  method: gptq\n";
        var m = ManifestParser.Parse(yaml, dir.File("quant.yaml"));
        Assert.Equal(Path.Combine(dir.Path, "models"), m.ModelPath);
        Assert.Equal(dir.File("calib.txt"), m.Calibration!.Data);
    }

    [Fact]
    public void UnknownKeyNamesLineColumnAndSuggestion()
    {
        var e = Fails(Valid("  method: gptq\n  grop_size: 16\n"));
        Assert.Equal(ErrorCodes.ManifestUnknownKey, e.Code);
        Assert.Equal((9, 3), (e.Line, e.Column));
        Assert.Contains("did you mean 'group_size'", e.Message);
        Assert.StartsWith("/work/app/quant.yaml(9,3): error DQ0002:", e.Format());
    }

    [Fact]
    public void MalformedYamlIsASyntaxErrorWithPosition()
    {
        var e = Fails("version: 1\nquantize:\n  method: [gptq\n");
        Assert.Equal(ErrorCodes.ManifestSyntax, e.Code);
        Assert.True(e.Line >= 3);
    }

    [Theory]
    [InlineData("  method: gptq\n  bits: four\n", "DQ0003")]
    [InlineData("  method: gptq\n  bits: 12\n", "DQ0004")]
    [InlineData("  method: gptq\n  group_size: 0\n", "DQ0004")]
    [InlineData("  method: gptq\n  damp: 11\n", "DQ0004")]
    [InlineData("  method: spiral\n", "DQ0004")]
    [InlineData("  method: rtn\n  compensation_aware: true\n", "DQ0006")]
    [InlineData("  method: rtn\n  act_order: true\n", "DQ0006")]
    [InlineData("  method: gptq\n  alpha: 0.5\n", "DQ0006")]
    [InlineData("  method: gptq\n  group_size: -1\n  static_groups: true\n", "DQ0006")]
    [InlineData("  method: gptaq\n  hessian: output_adaptive\n", "DQ0006")]
    [InlineData("  method: rtn\n  hessian: output_adaptive\n", "DQ0006")]
    [InlineData("  method: gptq\n  compensation_aware: true\n  hessian: output_adaptive\n", "DQ0006")]
    [InlineData("  method: spqr\n  compensation_aware: true\n", "DQ0006")]
    [InlineData("  method: gptq\n  outliers: { relative_threshold: 0.2 }\n", "DQ0006")]
    [InlineData("  method: spqr\n  outliers: { relative_threshold: -1 }\n", "DQ0004")]
    [InlineData("  method: spqr\n  outliers: { scale_bits: 9 }\n", "DQ0004")]
    [InlineData("  method: spqr\n  outliers: { beta: 3 }\n", "DQ0002")]
    [InlineData("  method: billm\n  bits: 2\n", "DQ0006")]
    [InlineData("  method: billm\n  billm: { metric: entropy }\n", "DQ0004")]
    [InlineData("  method: gptq\n  billm: { metric: magnitude }\n", "DQ0006")]
    [InlineData("  method: gptq\n  output_adaptive: { labels: sampled }\n", "DQ0006")]
    [InlineData("  method: gptq\n  hessian: output_adaptive\n  output_adaptive: { fisher: kfac }\n", "DQ0004")]
    [InlineData("  method: gptq\n  rotation: { seed: 1 }\n", "DQ0006")]
    [InlineData("  method: gptq\n  rotate: givens\n", "DQ0004")]
    [InlineData("  method: gptq\n  symmetric: maybe\n", "DQ0003")]
    [InlineData("  method: gptq\n  hessian: imatrix\n  imatrix: m.gguf\n", "DQ0119")]
    [InlineData("  method: rtn\n  hessian: imatrix\n", "DQ0004")]
    [InlineData("  method: rtn\n  imatrix: m.gguf\n", "DQ0006")]
    [InlineData("  method: rtn\n  hessian: imatrix\n  imatrix: /nonexistent/m.gguf\n", "DQ0100")]
    [InlineData("  method: rtn\n  hessian: diagonal\n", "DQ0004")]
    public void BadValuesAndImpossibleCombinations(string quantize, string code)
    {
        var e = Fails(Valid(quantize));
        Assert.Equal(code, e.Code);
        Assert.True(e.Line >= 8, $"line {e.Line}");
        Assert.True(e.Column >= 1);
    }

    [Fact]
    public void MissingCalibrationFileAndModelPointAtTheirLines()
    {
        var e = Fails(Valid().Replace(Calib, "/nonexistent/calib.txt"));
        Assert.Equal(ErrorCodes.CalibrationData, e.Code);
        Assert.Equal((4, 9), (e.Line, e.Column));
        var m = Fails(Valid().Replace(Model, "/nonexistent/model"));
        Assert.Equal(ErrorCodes.FileNotFound, m.Code);
        Assert.Equal(2, m.Line);
    }

    [Fact]
    public void GptqFormatNeedsUniformSupportedBits()
    {
        var e = Fails(Valid("  method: gptq\n  bits: 5\n").Replace("  name: out\n", "  name: out\n  format: gptq\n"));
        Assert.Equal(ErrorCodes.ManifestCombination, e.Code);
    }

    [Theory]
    [InlineData("  method: spqr\n", "spqr")]
    [InlineData("  method: billm\n", "billm")]
    [InlineData("  method: gptq\n  rotate: hadamard\n", "rotated")]
    public void GptqFormatRefusesSpqrBillmAndRotatedModels(string quantize, string what)
    {
        var e = Fails(Valid(quantize).Replace("  name: out\n", "  name: out\n  format: gptq\n"));
        Assert.Equal(ErrorCodes.ManifestCombination, e.Code);
        Assert.Contains(what, e.Message);
        Assert.Contains("format 'dotquant'", e.Message);
    }

    [Fact]
    public void LowBitOutputAdaptiveAndRotationSettingsParse()
    {
        var m = ManifestParser.Parse(Valid("  method: spqr\n  hessian: output_adaptive\n  output_adaptive: { fisher: token, labels: sampled, schedule: once, seed: 4 }\n  outliers: { relative_threshold: none, scale_bits: 4, zero_bits: 2, group_size: 8 }\n  rotate: hadamard\n  rotation: { seed: 9, down_proj: false }\n"), "/work/app/quant.yaml");
        var q = m.Quantize;
        Assert.Equal((2, 16, true, 1.0), (q.Bits, q.GroupSize, q.ActOrder, q.Damp));      // SpQR's README defaults
        Assert.Equal(new Hessians.OacOptions { Fisher = Hessians.FisherSample.Token, Labels = Hessians.FisherLabels.Sampled, Schedule = Hessians.OacSchedule.Once, Seed = 4 }, q.Oac);
        Assert.Equal(new Rotation.RotationOptions(Seed: 9, DownProj: false), q.Rotation);
        var plan = q.PlanFor("model.layers.0.mlp.up_proj")!;
        Assert.Equal(Quantizers.SolverKind.SpQR, plan.Kind);
        Assert.Equal((2, 16, 4, 2, 8, true), (plan.Spqr!.Bits, plan.Spqr.GroupSize, plan.Spqr.ScaleBits, plan.Spqr.ZeroBits, plan.Spqr.StatGroupSize, plan.Spqr.ActOrder));
        Assert.False(plan.Spqr.Outliers);

        var b = ManifestParser.Parse(Valid("  method: billm\n  block_size: 64\n  billm: { metric: magnitude, search_on: weights }\n"), "/work/app/quant.yaml").Quantize.PlanFor("x")!;
        Assert.Equal((Quantizers.SolverKind.BiLLM, 64, Quantizers.SalienceMetric.Magnitude, false), (b.Kind, b.Billm!.BlockSize, b.Billm.Metric, b.Billm.SearchOnSalience));
    }

    [Fact]
    public void EvaluateTasksAreResolvedAndMissingOnesPointAtTheirLine()
    {
        string dir = SharedPaths.Data("zeroshot");
        var m = ManifestParser.Parse(Valid() + $"evaluate:\n  tasks: {{ names: [piqa, winogrande], dir: {dir}, limit: 50 }}\n", "/work/app/quant.yaml");
        Assert.Equal(2, m.Evaluate!.Tasks!.Files.Count);
        Assert.Equal(50, m.Evaluate.Tasks.Limit);
        var e = Fails(Valid() + $"evaluate:\n  tasks:\n    names: [piqa, nope]\n    dir: {dir}\n");
        Assert.Equal(ErrorCodes.EvalData, e.Code);
        Assert.True(e.Line > 8);
        Assert.Equal(ErrorCodes.ManifestMissing, Fails(Valid() + "evaluate:\n  tasks: { limit: 5 }\n").Code);
    }

    [Fact]
    public void EverySampleManifestParses()
    {
        var samples = Directory.GetFiles(Path.Combine(SharedPaths.RepoRoot, "samples"), "*.yaml");
        Assert.True(samples.Length >= 3);
        foreach (var f in samples) ManifestParser.Load(f);
    }

    [Fact]
    public void VersionIsRequired()
    {
        Assert.Equal(ErrorCodes.ManifestVersion, Fails(Valid().Replace("version: 1\n", "")).Code);
        Assert.Equal(ErrorCodes.ManifestVersion, Fails(Valid().Replace("version: 1\n", "version: 2\n")).Code);
    }

    [Fact]
    public void LayerRulesFirstMatchWins()
    {
        var m = ManifestParser.Parse(Valid("  method: gptq\n  bits: 4\n  layers:\n    - { match: \"model.layers.0.*\", skip: true }\n    - { match: \"model.layers.*.mlp.down_proj\", bits: 8 }\n    - { match: \"*\", group_size: 32 }\n"), "/work/app/quant.yaml");
        Assert.Null(m.Quantize.PlanFor("model.layers.0.mlp.down_proj"));
        Assert.Equal(8, m.Quantize.PlanFor("model.layers.1.mlp.down_proj")!.Bits);
        Assert.Equal(128, m.Quantize.PlanFor("model.layers.1.mlp.down_proj")!.GroupSize);
        Assert.Equal(32, m.Quantize.PlanFor("model.layers.1.self_attn.q_proj")!.GroupSize);
        Assert.Equal(4, m.Quantize.PlanFor("model.layers.1.self_attn.q_proj")!.Bits);
    }

    [Fact]
    public void QuantizingLmHeadIsRefused()
    {
        var e = Fails(Valid("  method: gptq\n  layers:\n    - { match: lm_head, bits: 8 }\n"));
        Assert.Equal(ErrorCodes.ManifestNotAvailable, e.Code);
    }
}
