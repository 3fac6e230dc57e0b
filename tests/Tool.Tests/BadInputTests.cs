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
    public void UnknownOptionIsAUsageError()
    {
        var r = CliRunner.Run("eval", "--bogus");
        AssertUserError(r, "DQ0090");
    }
}
