using System.Text.Json;
using DotQuant.Engine.Tokenization;
using DotQuant.Tests;
using Reference = Tokenizers.DotNet.Tokenizer;

namespace DotQuant.Tokenizer.Tests;

/// <summary>One tokenizer folder loaded twice: by DotQuant and by the Hugging Face tokenizers
/// library. The reference applies the tokenizer's post-processor (a BOS for SentencePiece
/// vocabularies), so ours is asked for a BOS exactly when the reference adds one.</summary>
public sealed class TokenizerPair : IDisposable
{
    public string Name { get; }
    public string Directory { get; }
    public HfTokenizer Ours { get; }
    public Reference Theirs { get; }
    public bool ReferenceAddsBos { get; }
    /// <summary>Contents of the added tokens (special or not), for the fuzzer to put inside text.</summary>
    public string[] AddedTokens { get; }

    public TokenizerPair(string name, string dir)
    {
        Name = name;
        Directory = dir;
        Ours = HfTokenizer.Load(dir);
        Theirs = new Reference(vocabPath: Path.Combine(dir, "tokenizer.json"));
        var probe = Theirs.Encode("a");
        ReferenceAddsBos = Ours.BosTokenId is int bos && probe.Length > 0 && probe[0] == bos && Ours.Encode("a").FirstOrDefault() != bos;
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, "tokenizer.json")));
        AddedTokens = doc.RootElement.TryGetProperty("added_tokens", out var at)
            ? at.EnumerateArray().Select(a => a.GetProperty("content").GetString()!).ToArray()
            : [];
    }

    public int[] EncodeOurs(string text) => Ours.Encode(text, addBos: ReferenceAddsBos);
    public int[] EncodeTheirs(string text) => Theirs.Encode(text).Select(i => (int)i).ToArray();
    public bool Agrees(string text) => EncodeOurs(text).AsSpan().SequenceEqual(EncodeTheirs(text));

    /// <summary>The shared tokenizer folders and the shared models with a tokenizer.json.</summary>
    public static IEnumerable<(string Name, string Dir)> All()
    {
        foreach (var n in new[] { "gpt2", "llama3", "qwen2.5", "qwen3", "mistral-v0.1" })
            yield return (n, Path.Combine(SharedPaths.Root, "tokenizers", n));
        yield return ("stories260K", SharedPaths.Stories260K);
        yield return ("llama-tiny", Path.Combine(SharedPaths.Root, "models", "llama-tiny"));
    }

    public static TheoryData<string> Names() => new(All().Select(a => a.Name));

    public static TokenizerPair Open(string name) => new(name, All().Single(a => a.Name == name).Dir);

    public void Dispose() => Theirs.Dispose();
}
