using System.Text;
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
        string data = DotQuant.Tests.SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt");
        AssertUserError(CliRunner.Run("eval", dir, "--data", data, "--max-windows", "1"), code);
        AssertUserError(CliRunner.Run("inspect", dir), code);
    }

    static void WriteSafetensors(string path, string header, int dataBytes, ulong? declared = null)
    {
        var h = Encoding.UTF8.GetBytes(header);
        using var fs = File.Create(path);
        fs.Write(BitConverter.GetBytes(declared ?? (ulong)h.Length));
        fs.Write(h);
        fs.Write(new byte[dataBytes]);
    }

    [Fact]
    public void TruncatedCheckpoint()
    {
        using var dir = CliRunner.CopyOfStories();
        var bytes = File.ReadAllBytes(dir.File("model.safetensors"));
        File.WriteAllBytes(dir.File("model.safetensors"), bytes.AsSpan(0, bytes.Length - 1000).ToArray());
        BothCommands(dir.Path, "DQ0106");
    }

    [Fact]
    public void HeaderLongerThanFile()
    {
        using var dir = CliRunner.CopyOfStories();
        WriteSafetensors(dir.File("model.safetensors"), "{}", 16, declared: 1 << 20);
        BothCommands(dir.Path, "DQ0102");
    }

    [Fact]
    public void OverlappingSpans()
    {
        using var dir = CliRunner.CopyOfStories();
        WriteSafetensors(dir.File("model.safetensors"),
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 24);
        BothCommands(dir.Path, "DQ0107");
    }

    [Fact]
    public void UnknownDtype()
    {
        using var dir = CliRunner.CopyOfStories();
        WriteSafetensors(dir.File("model.safetensors"), "{\"a\":{\"dtype\":\"Q4_K\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4);
        BothCommands(dir.Path, "DQ0104");
    }

    [Fact]
    public void MissingConfigKey()
    {
        using var dir = CliRunner.CopyOfStories();
        File.WriteAllText(dir.File("config.json"), File.ReadAllText(dir.File("config.json")).Replace("\"hidden_size\": 64,", ""));
        var r = CliRunner.Run("eval", dir.Path, "--data", DotQuant.Tests.SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt"));
        AssertUserError(r, "DQ0121");
        Assert.Contains("hidden_size", r.Stderr);
        AssertUserError(CliRunner.Run("inspect", dir.Path), "DQ0121");
    }

    [Fact]
    public void UnsupportedModelType()
    {
        using var dir = CliRunner.CopyOfStories();
        File.WriteAllText(dir.File("config.json"), File.ReadAllText(dir.File("config.json")).Replace("\"model_type\": \"llama\"", "\"model_type\": \"rwkv\""));
        var r = CliRunner.Run("eval", dir.Path, "--data", DotQuant.Tests.SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt"));
        AssertUserError(r, "DQ0122");
        Assert.Contains("rwkv", r.Stderr);
    }

    [Fact]
    public void PickleCheckpoint()
    {
        using var dir = CliRunner.CopyOfStories();
        File.Delete(dir.File("model.safetensors"));
        File.WriteAllBytes(dir.File("pytorch_model.bin"), [0x80, 0x02, 0x63, 0x6f, 0x73, 0x0a]);
        BothCommands(dir.Path, "DQ0108");
    }

    [Fact]
    public void WeightShapeDisagreesWithConfig()
    {
        using var dir = CliRunner.CopyOfStories();
        File.WriteAllText(dir.File("config.json"), File.ReadAllText(dir.File("config.json")).Replace("\"intermediate_size\": 172", "\"intermediate_size\": 128"));
        var r = CliRunner.Run("eval", dir.Path, "--data", DotQuant.Tests.SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt"));
        AssertUserError(r, "DQ0125");
    }

    [Fact]
    public void UnknownOptionIsAUsageError()
    {
        var r = CliRunner.Run("eval", "--bogus");
        AssertUserError(r, "DQ0090");
    }
}
