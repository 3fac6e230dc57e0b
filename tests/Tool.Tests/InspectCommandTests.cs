using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

public class InspectCommandTests
{
    [Fact]
    public void ListsStories260KTensorsAndCounts()
    {
        var r = CliRunner.Run("inspect", SharedPaths.Stories260K, "--format", "json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var json = r.LastJson();
        Assert.Equal(260_032, json.GetProperty("parameters").GetInt64());
        Assert.Equal(260_032 * 4, json.GetProperty("bytes").GetInt64());
        var embed = json.GetProperty("tensors").EnumerateArray().Single(t => t.GetProperty("name").GetString() == "model.embed_tokens.weight");
        Assert.Equal("F32", embed.GetProperty("dtype").GetString());
        Assert.Equal(new[] { 512L, 64L }, embed.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()));
    }

    [Fact]
    public void TextFormatAcceptsASingleFile()
    {
        var r = CliRunner.Run("inspect", Path.Combine(SharedPaths.Stories260K, "model.safetensors"));
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("model.layers.4.mlp.down_proj.weight", r.Stdout);
        Assert.Contains("260,032 parameters", r.Stdout);
    }
}
