using System.Text;
using DotQuant.Engine.Tokenization;
using Xunit.Abstractions;

namespace DotQuant.Tokenizer.Tests;

/// <summary>Our token ids against the Hugging Face tokenizers library on every shared tokenizer and
/// model: llama.cpp's test vectors, the shared evaluation texts line by line, and a seeded fuzzer.
/// A failure prints the smallest input that still differs.</summary>
public sealed class DifferentialTests(ITestOutputHelper output)
{
    public const int FuzzInputs = 20_000;

    public static TheoryData<string> Names() => TokenizerPair.Names();

    [Theory]
    [MemberData(nameof(Names))]
    public void LlamaCpp_vectors_give_the_libraries_ids(string name)
    {
        using var pair = TokenizerPair.Open(name);
        var inputs = Directory.GetFiles(Path.Combine(DotQuant.Tests.SharedPaths.Root, "tokenizers", "llama.cpp-vectors"), "*.inp")
            .SelectMany(f => File.ReadAllText(f).Split("\n__ggml_vocab_test__\n"))
            .Distinct().ToList();
        Assert.True(inputs.Count >= 40, $"{inputs.Count} vector inputs");
        AssertAgree(pair, inputs);
    }

    [Theory]
    [MemberData(nameof(Names))]
    public void Shared_texts_give_the_libraries_ids(string name)
    {
        using var pair = TokenizerPair.Open(name);
        string[] files =
        [
            DotQuant.Tests.SharedPaths.Data("wikitext2", "wiki.test.raw"),
            DotQuant.Tests.SharedPaths.Data("ptb", "ptb.valid.txt"),
            DotQuant.Tests.SharedPaths.Data("tinystories", "valid-excerpt.txt"),
        ];
        var lines = files.SelectMany(f => File.ReadAllText(f).Split('\n').Select(l => l + "\n")).Distinct().ToList();
        AssertAgree(pair, lines);
        // One long input as well: what calibration and evaluation actually encode.
        string whole = File.ReadAllText(files[2]);
        Assert.Equal(pair.EncodeTheirs(whole), pair.EncodeOurs(whole));
    }

    [Theory]
    [MemberData(nameof(Names))]
    public void Fuzzed_unicode_gives_the_libraries_ids(string name)
    {
        using var pair = TokenizerPair.Open(name);
        var fuzzer = new TextFuzzer(seed: 20261127 + name.Length, pair.AddedTokens);
        var inputs = Enumerable.Range(0, FuzzInputs).Select(_ => fuzzer.Next()).ToList();
        AssertAgree(pair, inputs);
        output.WriteLine($"{name}: {inputs.Count} fuzzed inputs, {inputs.Sum(s => s.Length)} UTF-16 units, identical ids");
    }

    [Theory]
    [MemberData(nameof(Names))]
    public void Decoding_matches_the_library_and_byte_level_round_trips(string name)
    {
        using var pair = TokenizerPair.Open(name);
        var fuzzer = new TextFuzzer(seed: 7 + name.Length, addedTokens: []);
        bool byteLevel = name is "gpt2" or "llama3" or "qwen2.5" or "qwen3";
        for (int i = 0; i < 2000; i++)
        {
            string text = fuzzer.Next();
            var ids = pair.EncodeTheirs(text);
            string ours = pair.Ours.Decode(ids);
            Assert.Equal(pair.Theirs.Decode(ids.Select(x => (uint)x).ToArray()), ours);
            // Byte-level BPE is lossless up to the normalizer (Qwen's NFC).
            if (byteLevel)
                Assert.Equal(name.StartsWith("qwen", StringComparison.Ordinal) ? HfNormalization.Normalize(text, NormalizationForm.FormC) : text, ours);
        }
    }

    void AssertAgree(TokenizerPair pair, IReadOnlyList<string> inputs)
    {
        foreach (var text in inputs)
        {
            if (pair.Agrees(text)) continue;
            string smallest = Minimizer.Shrink(text, s => !pair.Agrees(s));
            string message = $"{pair.Name}: ids differ from the tokenizers library on {Minimizer.Describe(smallest)}\n" +
                             $"  ours:   {string.Join(' ', pair.EncodeOurs(smallest))}\n" +
                             $"  theirs: {string.Join(' ', pair.EncodeTheirs(smallest))}";
            output.WriteLine(message);
            Assert.Fail(message);
        }
    }
}
