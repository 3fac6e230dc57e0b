using DotQuant.Runtime;
using DotQuant.Engine.Manifest;
using DotQuant.Tests;

namespace DotQuant.Engine.Tests;

/// <summary>output.format onnx accepts what MatMulNBits can hold and names the key that it cannot.</summary>
public class OnnxManifestTests
{
    static string Yaml(string quantize, string layers = "") =>
        $"version: 1\nmodel: {SharedPaths.Stories260K}\ncalibration:\n  data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")}\n  samples: 8\n  sequence_length: 64\n" +
        $"quantize:\n{quantize}{layers}output:\n  name: out\n  format: onnx\n";

    [Theory]
    [InlineData("  method: gptq\n  bits: 4\n  group_size: 32\n")]
    [InlineData("  method: rtn\n  bits: 8\n  group_size: 128\n")]
    [InlineData("  method: gptq\n  bits: 4\n  group_size: -1\n")]
    [InlineData("  method: gptq\n  bits: 4\n  group_size: 48\n  act_order: true\n  static_groups: true\n")]
    [InlineData("  method: gptaq\n  compensation_aware: true\n")]
    [InlineData("  method: gptq\n  hessian: output_adaptive\n")]
    public void AcceptsWhatMatMulNBitsHolds(string quantize)
    {
        var m = ManifestParser.Parse(Yaml(quantize), "/work/app/quant.yaml");
        Assert.Equal(OutputFormat.Onnx, m.Output.Format);
    }

    [Theory]
    [InlineData("  method: gptq\n  bits: 3\n", "", 9)]
    [InlineData("  method: gptq\n  bits: 4\n  group_size: 24\n", "", 10)]
    [InlineData("  method: gptq\n  act_order: true\n", "", 9)]
    [InlineData("  method: spqr\n", "", 11)]   // at output.format
    [InlineData("  method: billm\n", "", 11)]
    [InlineData("  method: gptq\n  rotate: hadamard\n", "", 12)]
    [InlineData("  method: gptq\n", "  layers:\n    - match: down_proj\n      bits: 2\n", 10)]   // at the rule
    public void RefusesWhatItCannotHoldAtTheKey(string quantize, string layers, int line)
    {
        var e = Assert.Throws<DotQuantException>(() => ManifestParser.Parse(Yaml(quantize, layers), "/work/app/quant.yaml"));
        Assert.Equal(ErrorCodes.ManifestCombination, e.Code);
        Assert.Contains("onnx", e.Message);
        Assert.Equal(line, e.Line);
    }

    [Fact]
    public void HeadIsInt8UnlessTheManifestSaysOtherwise()
    {
        Assert.Equal(OnnxHead.Int8, ManifestParser.Parse(Yaml("  method: gptq\n"), "/work/app/quant.yaml").Output.OnnxHead);
        Assert.Equal(OnnxHead.Float, ManifestParser.Parse(Yaml("  method: gptq\n") + "  onnx: { head: float }\n", "/work/app/quant.yaml").Output.OnnxHead);
        Assert.Equal(OnnxHead.Int4, ManifestParser.Parse(Yaml("  method: gptq\n") + "  onnx: { head: int4 }\n", "/work/app/quant.yaml").Output.OnnxHead);
        var bad = Assert.Throws<DotQuantException>(() => ManifestParser.Parse(Yaml("  method: gptq\n") + "  onnx: { head: int2 }\n", "/work/app/quant.yaml"));
        Assert.Equal((ErrorCodes.ManifestValue, 12), (bad.Code, bad.Line));
        var elsewhere = Assert.Throws<DotQuantException>(() => ManifestParser.Parse(Yaml("  method: gptq\n").Replace("format: onnx", "format: dotquant") + "  onnx: { head: int4 }\n", "/work/app/quant.yaml"));
        Assert.Equal(ErrorCodes.ManifestCombination, elsewhere.Code);
    }
}
