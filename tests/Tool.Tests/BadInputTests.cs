using DotQuant.Tests;
using System.Text.RegularExpressions;

namespace DotQuant.Tool.Tests;

/// <summary>Each kind of broken input gives exit code 1 and a one-line DQ diagnostic from both
/// commands that read it, never a crash (exit 3) or a stack trace.</summary>
public class BadInputTests
{
    static void AssertUserError(CliResult r, string code)
    {
        Assert.True(r.ExitCode == 1, $"exit {r.ExitCode}: {r.Stderr}");
        Assert.Contains($"error {code}: ", r.Stderr);
        Assert.Single(r.Stderr.TrimEnd().Split('\n'));
        Assert.DoesNotMatch(new Regex(@"\bat \S+\("), r.Stderr);
    }

    static void BothCommands(string dir, string code)
    {
        string data = SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt");
        AssertUserError(CliRunner.Run("eval", dir, "--data", data, "--max-windows", "1"), code);
        AssertUserError(CliRunner.Run("inspect", dir), code);
    }

    [Fact]
    public void TruncatedCheckpoint()
    {
        using var dir = Fixtures.CopyOfStories();
        var bytes = File.ReadAllBytes(dir.File("model.safetensors"));
        File.WriteAllBytes(dir.File("model.safetensors"), bytes.AsSpan(0, bytes.Length - 1000).ToArray());
        BothCommands(dir.Path, "DQ0106");
    }

    [Fact]
    public void HeaderLongerThanFile()
    {
        using var dir = Fixtures.CopyOfStories();
        Fixtures.WriteRawSafetensors(dir.File("model.safetensors"), "{}", 16, declaredLength: 1 << 20);
        BothCommands(dir.Path, "DQ0102");
    }

    [Fact]
    public void OverlappingSpans()
    {
        using var dir = Fixtures.CopyOfStories();
        Fixtures.WriteRawSafetensors(dir.File("model.safetensors"),
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 24);
        BothCommands(dir.Path, "DQ0107");
    }

    [Fact]
    public void UnknownDtype()
    {
        using var dir = Fixtures.CopyOfStories();
        Fixtures.WriteRawSafetensors(dir.File("model.safetensors"), "{\"a\":{\"dtype\":\"Q4_K\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4);
        BothCommands(dir.Path, "DQ0104");
    }

    [Fact]
    public void MissingConfigKey()
    {
        using var dir = Fixtures.CopyOfStories();
        Fixtures.Edit(dir.File("config.json"), "\"hidden_size\": 64,", "");
        var r = CliRunner.Run("eval", dir.Path, "--data", SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt"));
        AssertUserError(r, "DQ0121");
        Assert.Contains("hidden_size", r.Stderr);
        AssertUserError(CliRunner.Run("inspect", dir.Path), "DQ0121");
    }

    [Fact]
    public void UnsupportedModelType()
    {
        using var dir = Fixtures.CopyOfStories();
        Fixtures.Edit(dir.File("config.json"), "\"model_type\": \"llama\"", "\"model_type\": \"rwkv\"");
        var r = CliRunner.Run("eval", dir.Path, "--data", SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt"));
        AssertUserError(r, "DQ0122");
        Assert.Contains("rwkv", r.Stderr);
    }

    [Fact]
    public void PickleCheckpoint()
    {
        using var dir = Fixtures.CopyOfStories();
        File.Delete(dir.File("model.safetensors"));
        File.WriteAllBytes(dir.File("pytorch_model.bin"), [0x80, 0x02, 0x63, 0x6f, 0x73, 0x0a]);
        BothCommands(dir.Path, "DQ0108");
    }

    [Fact]
    public void WeightShapeDisagreesWithConfig()
    {
        using var dir = Fixtures.CopyOfStories();
        Fixtures.Edit(dir.File("config.json"), "\"intermediate_size\": 172", "\"intermediate_size\": 128");
        var r = CliRunner.Run("eval", dir.Path, "--data", SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt"));
        AssertUserError(r, "DQ0125");
    }

    [Fact]
    public void NonFiniteWeightsAreReportedNotAveraged()
    {
        using var dir = Fixtures.CopyOfStories();
        var bytes = File.ReadAllBytes(dir.File("model.safetensors"));
        // Overwrite the last 4 bytes of the data (a weight) with a float NaN.
        BitConverter.GetBytes(float.NaN).CopyTo(bytes, bytes.Length - 4);
        File.WriteAllBytes(dir.File("model.safetensors"), bytes);
        AssertUserError(CliRunner.Run("eval", dir.Path, "--data", SharedPaths.Data("tinystories", "valid-excerpt.txt"), "--max-windows", "1", "--sequence-length", "64"), "DQ0142");
    }

    [Fact]
    public void AlreadyQuantizedCheckpointIsRefused()
    {
        using var dir = Fixtures.CopyOfStories();
        Fixtures.Edit(dir.File("config.json"), "\"use_cache\": true", "\"use_cache\": true, \"quantization_config\": {\"quant_method\": \"awq\", \"bits\": 4}");
        var r = CliRunner.Run("eval", dir.Path, "--data", SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt"));
        AssertUserError(r, "DQ0122");
        Assert.Contains("already quantized", r.Stderr);
    }

    [Fact]
    public void IntegerWeightIsRejected()
    {
        using var dir = new TempDir();
        SyntheticModel.Write(dir.Path, new SyntheticModel.Spec
        {
            Layers = 1, TokenizerText = File.ReadAllText(SharedPaths.Data("tinystories", "stories-sample.txt")),
        });
        // Same bytes, one weight declared I32: a float model must not silently upcast integers.
        const string key = "\"model.layers.0.mlp.down_proj.weight\":{\"dtype\":\"F32\"";
        var bytes = File.ReadAllBytes(dir.File("model.safetensors"));
        string header = System.Text.Encoding.UTF8.GetString(bytes, 8, (int)BitConverter.ToUInt64(bytes, 0));
        Assert.Contains(key, header);
        System.Text.Encoding.UTF8.GetBytes(header.Replace(key, key.Replace("F32", "I32"))).CopyTo(bytes, 8);
        File.WriteAllBytes(dir.File("model.safetensors"), bytes);
        var r = CliRunner.Run("eval", dir.Path, "--data", SharedPaths.Data("tinystories", "stories-sample.txt"), "--max-windows", "1");
        AssertUserError(r, "DQ0125");
        Assert.Contains("I32", r.Stderr);
    }

    [Fact]
    public void UnknownOptionIsAUsageError()
    {
        var r = CliRunner.Run("eval", "--bogus");
        AssertUserError(r, "DQ0090");
    }
}
