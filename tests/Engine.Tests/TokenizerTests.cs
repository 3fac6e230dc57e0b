using System.Text.Json.Nodes;
using DotQuant.Runtime;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;
using DotQuant.Tests;

namespace DotQuant.Engine.Tests;

public class TokenizerTests
{
    static int[] ReadIds(string line) => line.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray();

    [Fact]
    public void ReproducesWikiTextReferenceIds()
    {
        var tok = HfTokenizer.Load(SharedPaths.Stories260K);
        string text = File.ReadAllText(SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt"));
        var expected = ReadIds(File.ReadAllText(Path.Combine(SharedPaths.Stories260K, "reference", "wikitext2_test_gptq_style.ids.txt")));
        var actual = tok.Encode(text);
        Assert.Equal(expected.Length, actual.Length);
        Assert.Equal(expected, actual);
    }

    [Fact]
    public void ReproducesTinyStoriesReferenceIdsWithBos()
    {
        var tok = HfTokenizer.Load(SharedPaths.Stories260K);
        var stories = File.ReadAllText(SharedPaths.Data("tinystories", "valid-excerpt.txt"))
            .Split("<|endoftext|>", StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        var lines = File.ReadAllLines(Path.Combine(SharedPaths.Stories260K, "reference", "tinystories_valid_excerpt.ids.txt"))
            .Where(l => l.Length > 0).ToArray();
        Assert.Equal(lines.Length, stories.Length);
        for (int i = 0; i < stories.Length; i++)
            Assert.Equal(ReadIds(lines[i]), tok.Encode(stories[i], addBos: true));
    }

    [Fact]
    public void DecodesBackToText()
    {
        var tok = HfTokenizer.Load(SharedPaths.Stories260K);
        const string text = "Once upon a time, there was a café — naïve ✓ 漢字.";
        Assert.Equal(text, tok.Decode(tok.Encode(text)));
        Assert.Equal(text, tok.Decode(tok.Encode(text, addBos: true)));
    }

    static string WriteTokenizer(TempDir dir, JsonObject model, JsonNode? preTokenizer, JsonNode? normalizer = null, JsonNode? decoder = null)
    {
        var tok = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(new JsonObject { ["id"] = 0, ["content"] = "<|eot|>", ["special"] = true }),
            ["normalizer"] = normalizer,
            ["pre_tokenizer"] = preTokenizer,
            ["decoder"] = decoder ?? new JsonObject { ["type"] = "ByteLevel" },
            ["model"] = model,
        };
        File.WriteAllText(dir.File("tokenizer.json"), tok.ToJsonString());
        return dir.Path;
    }

    static JsonObject ByteLevelModel(string[] extra, string[][] merges, bool ignoreMerges = false)
    {
        var vocab = new JsonObject { ["<|eot|>"] = 0 };
        int id = 1;
        foreach (char c in ByteLevelAlphabet.ByteToChar) vocab[c.ToString()] = id++;
        foreach (var e in extra) vocab[e] = id++;
        return new JsonObject
        {
            ["type"] = "BPE", ["vocab"] = vocab, ["ignore_merges"] = ignoreMerges,
            ["merges"] = new JsonArray(merges.Select(m => (JsonNode)new JsonArray(m[0], m[1])).ToArray()),
        };
    }

    static JsonObject Gpt2Pre => new() { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["use_regex"] = true };

    [Fact]
    public void ByteLevelBpeSplitsWithGpt2RegexAndMergesByRank()
    {
        using var dir = new TempDir();
        // ids: 0 special, 1..256 bytes in alphabet order, then 257 "he", 258 "ll", 259 "hell", 260 "Ġw", 261 "hello"
        var model = ByteLevelModel(["he", "ll", "hell", "Ġw", "hello"], [["h", "e"], ["l", "l"], ["he", "ll"], ["Ġ", "w"], ["hell", "o"]]);
        var tok = HfTokenizer.Load(WriteTokenizer(dir, model, Gpt2Pre));
        int B(char c) => Array.IndexOf(ByteLevelAlphabet.ByteToChar, c) + 1;
        // "hello world" -> "hello" | "Ġworld"
        Assert.Equal(new[] { 261, 260, B('o'), B('r'), B('l'), B('d') }, tok.Encode("hello world"));
        // The special token is split out before BPE.
        Assert.Equal(new[] { 261, 0, 261 }, tok.Encode("hello<|eot|>hello"));
        Assert.Equal("hello world<|eot|>", tok.Decode(tok.Encode("hello world<|eot|>"), skipSpecial: false));
        Assert.Equal("héllo ✓", tok.Decode(tok.Encode("héllo ✓")));
    }

    [Fact]
    public void OverlappingMergesFollowRankThenLeftmost()
    {
        using var dir = new TempDir();
        // "aaa": merge (a,a) applies leftmost first -> [aa, a]; with "b a" ranked higher than "a a",
        // "baa" -> [ba, a].
        var model = ByteLevelModel(["aa", "ba"], [["b", "a"], ["a", "a"]]);
        var tok = HfTokenizer.Load(WriteTokenizer(dir, model, Gpt2Pre));
        int a = Array.IndexOf(ByteLevelAlphabet.ByteToChar, 'a') + 1;
        Assert.Equal(new[] { 257, a }, tok.Encode("aaa"));
        Assert.Equal(new[] { 258, a }, tok.Encode("baa"));
        Assert.Equal(new[] { 257, 257 }, tok.Encode("aaaa"));
    }

    [Fact]
    public void IgnoreMergesTakesWholeWordsFromTheVocabulary()
    {
        using var dir = new TempDir();
        // "abc" is in the vocabulary but unreachable by merges; Llama 3 style ignore_merges uses it.
        var model = ByteLevelModel(["abc"], [], ignoreMerges: true);
        var tok = HfTokenizer.Load(WriteTokenizer(dir, model, Gpt2Pre));
        Assert.Equal(new[] { 257 }, tok.Encode("abc"));
    }

    [Fact]
    public void Qwen2StyleSplitPatternIsolatesDigitsAndNewlines()
    {
        using var dir = new TempDir();
        SyntheticModel.WriteByteLevelTokenizer(dir.Path, "the cat sat on the mat. the cat 123\n\nthe end", 300);
        var tok = HfTokenizer.Load(dir.Path);
        const string text = "the cat 42\n\nsat — on ñ mat";
        Assert.Equal(text, tok.Decode(tok.Encode(text)));
        // Digits are single pre-tokens under the Qwen2 pattern: "42" can never merge.
        Assert.Equal(2, tok.Encode("42").Length);
    }

    [Theory]
    [InlineData("first", new[] { 5, 1, 4 })]
    [InlineData("always", new[] { 5, 1, 6 })]
    public void MetaspacePrependSchemeFirstSkipsSegmentsAfterAddedTokens(string scheme, int[] expected)
    {
        using var dir = new TempDir();
        var model = new JsonObject
        {
            ["type"] = "BPE", ["unk_token"] = "<unk>",
            ["vocab"] = new JsonObject { ["<unk>"] = 0, ["<s>"] = 1, ["▁"] = 2, ["a"] = 3, ["b"] = 4, ["▁a"] = 5, ["▁b"] = 6 },
            ["merges"] = new JsonArray(new JsonArray("▁", "a"), new JsonArray("▁", "b")),
        };
        var tok = new JsonObject
        {
            ["added_tokens"] = new JsonArray(new JsonObject { ["id"] = 1, ["content"] = "<s>", ["special"] = true }),
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject { ["type"] = "Metaspace", ["replacement"] = "▁", ["prepend_scheme"] = scheme, ["split"] = false },
            ["decoder"] = new JsonObject { ["type"] = "Metaspace", ["replacement"] = "▁", ["prepend_scheme"] = scheme },
            ["model"] = model,
        };
        File.WriteAllText(dir.File("tokenizer.json"), tok.ToJsonString());
        Assert.Equal(expected, HfTokenizer.Load(dir.Path).Encode("a<s>b"));
    }

    [Fact]
    public void UnsupportedModelTypeIsADiagnostic()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("tokenizer.json"), "{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}");
        Assert.Equal(ErrorCodes.TokenizerUnsupported, Assert.Throws<DotQuantException>(() => HfTokenizer.Load(dir.Path)).Code);
        File.WriteAllText(dir.File("tokenizer.json"), "{\"model\":");
        Assert.Equal(ErrorCodes.TokenizerMalformed, Assert.Throws<DotQuantException>(() => HfTokenizer.Load(dir.Path)).Code);
    }
}
