using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

/// <summary>`tokenize`: ids as the Hugging Face tokenizer gives them (llama.cpp's reference vectors, produced
/// with AutoTokenizer), from folders holding only tokenizer files; bad input gets a code.</summary>
public class TokenizeCommandTests
{
    static string Tokenizers(params string[] parts) => Path.Combine([SharedPaths.Root, "tokenizers", .. parts]);

    [Theory]
    [InlineData("gpt2", "gpt-2")]
    [InlineData("llama3", "llama-bpe")]
    [InlineData("qwen2.5", "qwen2")]
    [InlineData("qwen3", "qwen2")]
    public void TheIdsAreTheReferenceVectors(string folder, string vectors)
    {
        var inputs = File.ReadAllText(Tokenizers("llama.cpp-vectors", $"ggml-vocab-{vectors}.gguf.inp")).Split("\n__ggml_vocab_test__\n");
        var outputs = File.ReadAllLines(Tokenizers("llama.cpp-vectors", $"ggml-vocab-{vectors}.gguf.out"));
        using var dir = new TempDir();
        int checkedCount = 0;
        for (int i = 0; i < inputs.Length; i++)
        {
            if (inputs[i].Length == 0) continue;
            File.WriteAllText(dir.File("in.txt"), inputs[i]);
            var r = CliRunner.Run("tokenize", Tokenizers(folder), "--data", dir.File("in.txt"));
            Assert.True(r.ExitCode == 0, r.Stderr);
            Assert.Equal(outputs[i].Trim(), r.Stdout.Trim());
            checkedCount++;
        }
        Assert.True(checkedCount >= 40, $"{checkedCount} vectors");
    }

    [Fact]
    public async Task TheToolNormalizesLikeTheLibrary()
    {
        // Qwen's normalizer is NFC: decomposed and composed text give the same ids. Run as a child
        // process, so the tool's own runtime settings apply (invariant globalization would skip NFC).
        var composed = await CliRunner.RunProcessAsync("tokenize", Tokenizers("qwen3"), "--text", "caf\u00E9 \U0001D7D9\U0001D7DA");
        var decomposed = await CliRunner.RunProcessAsync("tokenize", Tokenizers("qwen3"), "--text", "cafe\u0301 \U0001D7D9\U0001D7DA");
        Assert.True(composed.ExitCode == 0, composed.Stderr);
        Assert.Equal(composed.Stdout, decomposed.Stdout);
        // Qwen splits digits one by one, also the mathematical ones outside the BMP (𝟙, 𝟚).
        var one = await CliRunner.RunProcessAsync("tokenize", Tokenizers("qwen3"), "--text", "\U0001D7D9");
        var two = await CliRunner.RunProcessAsync("tokenize", Tokenizers("qwen3"), "--text", "\U0001D7DA");
        var both = await CliRunner.RunProcessAsync("tokenize", Tokenizers("qwen3"), "--text", "\U0001D7D9\U0001D7DA");
        Assert.Equal(one.Stdout.Trim() + " " + two.Stdout.Trim(), both.Stdout.Trim());
    }

    [Fact]
    public void TextFormatShowsEachPieceAndBosIsPrepended()
    {
        var r = CliRunner.Run("tokenize", SharedPaths.Stories260K, "--text", "Once upon a time", "--bos", "--format", "text");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var lines = r.Stdout.TrimEnd().Split('\n');
        Assert.Matches(@"^\s*1 -> '<s>'$", lines[0]);
        Assert.Contains(lines, l => l.Contains("'▁Once'") || l.Contains("'▁On'"));
        var json = CliRunner.Run("tokenize", SharedPaths.Stories260K, "--text", "Once upon a time", "--format", "json").LastJson();
        Assert.Equal(lines.Length - 1, json.GetProperty("count").GetInt32());
    }

    [Theory]
    [InlineData(new[] { "--text", "a", "--data", "x.txt" }, "DQ0090")]
    [InlineData(new string[0], "DQ0090")]
    [InlineData(new[] { "--data", "/no/such/file.txt" }, "DQ0100")]
    public void BadInputGetsACode(string[] options, string code)
    {
        var r = CliRunner.Run(["tokenize", SharedPaths.Stories260K, .. options]);
        Assert.Equal(1, r.ExitCode);
        Assert.Contains(code, r.Stderr);
    }

    [Fact]
    public void AFolderWithoutATokenizerGetsACode()
    {
        using var dir = new TempDir();
        var r = CliRunner.Run("tokenize", dir.Path, "--text", "a");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("DQ0130", r.Stderr);
    }
}
