using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

public class EvalCommandTests
{
    static readonly string Wiki = SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt");

    [Fact]
    public void JsonLastLineHasPerplexityTokensWindowsSeconds()
    {
        var r = CliRunner.Run("eval", SharedPaths.Stories260K, "--data", Wiki, "--sequence-length", "512", "--max-windows", "40", "--format", "json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var json = r.LastJson();
        Assert.Equal(40, json.GetProperty("windows").GetInt32());
        Assert.Equal(815_069, json.GetProperty("tokens").GetInt64());
        Assert.Equal(40 * 511, json.GetProperty("predicted_tokens").GetInt64());
        Assert.InRange(json.GetProperty("perplexity").GetDouble(), 50, 400);
        Assert.True(json.GetProperty("seconds").GetDouble() > 0);
    }

    [Fact]
    public void DocumentProtocolReproducesTinyStoriesReference()
    {
        var r = CliRunner.Run("eval", SharedPaths.Stories260K, "--data", SharedPaths.Data("tinystories", "valid-excerpt.txt"),
            "--document-separator", "<|endoftext|>", "--bos", "--sequence-length", "512", "--format", "json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var json = r.LastJson();
        Assert.Equal(14_433, json.GetProperty("predicted_tokens").GetInt64());
        Assert.InRange(json.GetProperty("perplexity").GetDouble(), 3.368, 3.378);
    }

    [Fact]
    public void DefaultSequenceLengthIsMinOf2048AndMaxPositions()
    {
        var r = CliRunner.Run("eval", SharedPaths.Stories260K, "--data", Wiki, "--max-windows", "2", "--format", "json");
        Assert.Equal(0, r.ExitCode);
        Assert.Equal(512, r.LastJson().GetProperty("sequence_length").GetInt32());
    }

    [Fact]
    public async Task ExecutableRunsOutOfProcessWithExitCodes()
    {
        var ok = await CliRunner.RunProcessAsync("eval", SharedPaths.Stories260K, "--data", Wiki, "--max-windows", "1", "--format", "json");
        Assert.True(ok.ExitCode == 0, ok.Stderr);
        Assert.True(ok.LastJson().GetProperty("perplexity").GetDouble() > 1);

        var bad = await CliRunner.RunProcessAsync("eval", "/nonexistent/model", "--data", Wiki);
        Assert.Equal(1, bad.ExitCode);
        Assert.Matches(@"error DQ0\d{3}: ", bad.Stderr);
        Assert.Single(bad.Stderr.TrimEnd().Split('\n'));   // one line, no stack trace
    }

    [Fact]
    public void SequenceLongerThanContextIsUserError()
    {
        var r = CliRunner.Run("eval", SharedPaths.Stories260K, "--data", Wiki, "--sequence-length", "4096");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("DQ0141", r.Stderr);
    }

    [Fact]
    public void MissingDataFileIsUserError()
    {
        var r = CliRunner.Run("eval", SharedPaths.Stories260K, "--data", "/nonexistent.txt");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("DQ0140", r.Stderr);
    }

    [Fact]
    public void WorksOnAQwen2FolderWithBiasSeparateHeadAndGqa()
    {
        using var dir = new TempDir();
        var text = File.ReadAllText(SharedPaths.Data("tinystories", "stories-sample.txt"));
        SyntheticModel.Write(dir.Path, new SyntheticModel.Spec
        {
            ModelType = "qwen2", HiddenSize = 64, Heads = 8, KvHeads = 2, Layers = 2, VocabSize = 400,
            TieWordEmbeddings = false, MaxPositions = 128, TokenizerText = text, DType = TorchSharp.torch.ScalarType.BFloat16,
        });
        var r = CliRunner.Run("eval", dir.Path, "--data", SharedPaths.Data("tinystories", "stories-sample.txt"), "--format", "json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var json = r.LastJson();
        Assert.Equal(128, json.GetProperty("sequence_length").GetInt32());
        Assert.True(json.GetProperty("windows").GetInt32() > 10);
        var inspect = CliRunner.Run("inspect", dir.Path, "--format", "json");
        Assert.Equal(0, inspect.ExitCode);
        var names = inspect.LastJson().GetProperty("tensors").EnumerateArray().Select(t => t.GetProperty("name").GetString()).ToList();
        Assert.Contains("lm_head.weight", names);
        Assert.Contains("model.layers.0.self_attn.q_proj.bias", names);
        Assert.Equal("qwen2", inspect.LastJson().GetProperty("model_type").GetString());
    }
}
