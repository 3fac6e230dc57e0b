using DotQuant.Engine.Gguf;
using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

/// <summary>`inspect` and `eval` take GGUF files.</summary>
public class GgufCommandTests
{
    static string LlamaTiny => Path.Combine(SharedPaths.Root, "models", "llama-tiny");

    [Fact]
    public void AGgufFileIsInspectedAndEvaluatedLikeItsCheckpoint()
    {
        using var dir = new TempDir();
        GgufFloatExport.Write(LlamaTiny, dir.File("llama-tiny-f16.gguf"), GgmlType.F16);
        File.Copy(Path.Combine(LlamaTiny, "tokenizer.json"), dir.File("tokenizer.json"));

        var inspect = CliRunner.Run("inspect", dir.File("llama-tiny-f16.gguf"), "--format", "json");
        Assert.True(inspect.ExitCode == 0, inspect.Stderr);
        var json = inspect.LastJson();
        Assert.Equal(4_984_064, json.GetProperty("parameters").GetInt64());
        var q = json.GetProperty("tensors").EnumerateArray().Single(t => t.GetProperty("name").GetString() == "blk.0.attn_q.weight");
        Assert.Equal("F16", q.GetProperty("type").GetString());
        Assert.Equal("llama", json.GetProperty("metadata").GetProperty("general.architecture").GetString());

        string data = SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt");
        var hf = CliRunner.Run("eval", LlamaTiny, "--data", data, "--sequence-length", "256", "--max-windows", "2", "--format", "json");
        var gguf = CliRunner.Run("eval", dir.Path, "--data", data, "--sequence-length", "256", "--max-windows", "2", "--format", "json");
        Assert.True(gguf.ExitCode == 0, gguf.Stderr);
        double a = hf.LastJson().GetProperty("perplexity").GetDouble(), b = gguf.LastJson().GetProperty("perplexity").GetDouble();
        // F16 weights: the same model to about three decimal digits.
        Assert.True(Math.Abs(b / a - 1) < 2e-3, $"checkpoint {a:F4}, F16 GGUF {b:F4}");
        Assert.NotEqual(a, b);
    }

    [Fact]
    public void ATruncatedGgufGetsACode()
    {
        using var dir = new TempDir();
        GgufFloatExport.Write(LlamaTiny, dir.File("m.gguf"), GgmlType.F32);
        var bytes = File.ReadAllBytes(dir.File("m.gguf"));
        File.WriteAllBytes(dir.File("m.gguf"), bytes[..(bytes.Length / 2)]);
        var r = CliRunner.Run("inspect", dir.File("m.gguf"));
        Assert.Equal(1, r.ExitCode);
        Assert.True(r.Stderr.Contains("DQ0112"), r.Stderr);
    }
}
