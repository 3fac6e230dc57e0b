using DotQuant.Engine.Calibration;
using DotQuant.Runtime;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Tests;

namespace DotQuant.Onnx.Tests;

/// <summary>Damaged ONNX folders and models the graph cannot express get a coded diagnostic, not a crash
/// or a wrong model.</summary>
public class OnnxFolderTests
{
    static string Manifest(string modelPath) =>
        $"version: 1\nmodel: {modelPath}\ncalibration:\n  data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")}\n  samples: 4\n  sequence_length: 64\n" +
        "quantize:\n  method: rtn\n  bits: 4\n  group_size: 32\noutput:\n  name: out\n  format: onnx\n";

    static string Written(TempDir dir)
    {
        File.WriteAllText(dir.File("quant.yaml"), Manifest(SharedPaths.Stories260K));
        return QuantizeJob.Run(ManifestParser.Load(dir.File("quant.yaml")), dir.File("runs")).Output;
    }

    [Fact]
    public void AModelFileThatIsNotOnnxIsDq0117()
    {
        using var dir = new TempDir();
        string folder = Written(dir);
        File.WriteAllBytes(Path.Combine(folder, "model.onnx"), [0xFF, 0xFF, 0xFF, 0x01, 0x02]);
        var e = Assert.Throws<DotQuantException>(() => ModelLoader.Open(folder));
        Assert.Equal(ErrorCodes.OnnxModel, e.Code);
    }

    [Fact]
    public void ATruncatedDataFileIsDq0117WhenTheWeightIsRead()
    {
        using var dir = new TempDir();
        string folder = Written(dir);
        string data = Path.Combine(folder, "model.onnx.data");
        using (var f = new FileStream(data, FileMode.Open)) f.SetLength(f.Length / 2);
        var e = Assert.Throws<DotQuantException>(() =>
        {
            using var model = ModelLoader.Open(folder);
            for (int b = 0; b < model.BlockCount; b++) model.LoadBlock(b).Dispose();
            using var head = model.HeadWeight();
        });
        Assert.Equal(ErrorCodes.OnnxModel, e.Code);
    }

    [Fact]
    public void AFamilyTheGraphDoesNotCoverIsDq0122()
    {
        var c = ModelLoader.LoadConfig(SharedPaths.Stories260K) with { ModelType = "falcon" };
        var e = Assert.Throws<DotQuantException>(() => DotQuant.Engine.Onnx.DecoderOnnxGraph.Check(c, SharedPaths.Stories260K));
        Assert.Equal(ErrorCodes.UnsupportedModelType, e.Code);
        Assert.Contains("onnx", e.Message);
    }
}
