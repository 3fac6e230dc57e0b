using System.Text.Json;
using System.Text.RegularExpressions;
using DotQuant.Runtime;

namespace DotQuant.Engine.Gguf;

/// <summary>llama.cpp's token types (llama_token_type; SentencePiece's piece types use the same numbers).</summary>
public enum GgufTokenType { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 }

/// <summary>The tokenizer as GGUF metadata. SentencePiece-style BPE (Llama 1/2, Mistral, stories260K)
/// becomes llama.cpp's "llama" tokenizer: pieces, scores and types from tokenizer.model when the folder
/// has it (what convert_hf_to_gguf.py does), else from tokenizer.json with each merged piece scored by
/// its merge rank (llama.cpp merges the highest-scoring pair first, the BPE model the lowest rank:
/// the same order; the converter's fallback scores every piece −1000, which loses that order).</summary>
public sealed record GgufVocab(string Model, string[] Tokens, float[]? Scores, int[] Types,
    int? Bos, int? Eos, int? Unk, int? Pad, bool? AddBos, bool? AddEos, string? ChatTemplate)
{
    /// <summary>Byte-level BPE ("gpt2"): the merges, and llama.cpp's name for the pre-tokenizer.</summary>
    public string[]? Merges { get; init; }
    public string? Pre { get; init; }

    /// <summary>The pre-tokenizer regexes llama.cpp knows by name (llama-vocab.cpp), as tokenizer.json
    /// spells them; GPT-2's ByteLevel(use_regex) is "gpt-2".</summary>
    static readonly Dictionary<string, string> PreTokenizers = new(StringComparer.Ordinal)
    {
        [@"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"] = "qwen2",
        [@"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"] = "llama-bpe",
    };

    static readonly Regex BytePiece = new("^<0x[0-9A-Fa-f]{2}>$", RegexOptions.CultureInvariant);

    public IEnumerable<KeyValuePair<string, GgufValue>> Metadata()
    {
        yield return new("tokenizer.ggml.model", GgufValue.Of(Model));
        if (Pre is string pre) yield return new("tokenizer.ggml.pre", GgufValue.Of(pre));
        yield return new("tokenizer.ggml.tokens", GgufValue.Of(Tokens));
        if (Scores is not null) yield return new("tokenizer.ggml.scores", GgufValue.Of(Scores));
        yield return new("tokenizer.ggml.token_type", GgufValue.Of(Types));
        if (Merges is not null) yield return new("tokenizer.ggml.merges", GgufValue.Of(Merges));
        if (Bos is int b) yield return new("tokenizer.ggml.bos_token_id", GgufValue.Of((uint)b));
        if (Eos is int e) yield return new("tokenizer.ggml.eos_token_id", GgufValue.Of((uint)e));
        if (Unk is int u) yield return new("tokenizer.ggml.unknown_token_id", GgufValue.Of((uint)u));
        if (Pad is int p) yield return new("tokenizer.ggml.padding_token_id", GgufValue.Of((uint)p));
        if (AddBos is bool ab) yield return new("tokenizer.ggml.add_bos_token", GgufValue.Of(ab));
        if (AddEos is bool ae) yield return new("tokenizer.ggml.add_eos_token", GgufValue.Of(ae));
        if (ChatTemplate is string t) yield return new("tokenizer.chat_template", GgufValue.Of(t));
    }

    /// <summary>The vocabulary of a model folder, padded to <paramref name="vocabSize"/> with unused
    /// [PADi] pieces as the converter does when the embedding has more rows than the tokenizer.</summary>
    public static GgufVocab Load(string modelDir, int vocabSize)
    {
        string json = Path.Combine(modelDir, "tokenizer.json"), spm = Path.Combine(modelDir, "tokenizer.model");
        if (!File.Exists(json) && !File.Exists(spm))
            throw new DotQuantException(ErrorCodes.TokenizerMissing, $"neither tokenizer.json nor tokenizer.model in {modelDir}", modelDir);
        var tokens = Enumerable.Range(0, vocabSize).Select(i => $"[PAD{i}]").ToArray();
        var scores = Enumerable.Repeat(-10000f, vocabSize).ToArray();
        var types = Enumerable.Repeat((int)GgufTokenType.Unused, vocabSize).ToArray();
        using var doc = File.Exists(json) ? JsonDocument.Parse(File.ReadAllBytes(json)) : null;
        string? pre = null;
        string[]? merges = null;
        bool byteLevel = doc is not null && !File.Exists(spm) && IsByteLevel(doc.RootElement);
        if (byteLevel)
        {
            pre = PreTokenizerName(doc!.RootElement, json);
            merges = ByteLevelVocab(doc.RootElement, tokens, types);
        }
        else
        {
            if (doc is not null) CheckSentencePieceStyle(doc.RootElement, json);
            if (File.Exists(spm))
                foreach (var (id, piece, score, type) in SentencePieceModel.Read(spm))
                {
                    if (id >= vocabSize) break;
                    (tokens[id], scores[id], types[id]) = (piece, score, type);
                }
            else
                FromMerges(doc!.RootElement, tokens, scores, types);
        }

        var config = TokenizerConfig(modelDir);
        // Added tokens as the converter takes them: tokenizer_config.json's added_tokens_decoder,
        // else tokenizer.json's added_tokens; special ones become control tokens, others user-defined.
        var added = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var (id, content, special) in AddedTokens(config, doc?.RootElement))
        {
            added[content] = id;
            if (id >= vocabSize) continue;
            types[id] = (int)(special ? GgufTokenType.Control : GgufTokenType.UserDefined);
            tokens[id] = special || byteLevel ? content : content.Replace('\u2581', ' ');
            scores[id] = -1000f;
        }

        int? Id(string key)
        {
            string? tok = config is { } c && c.TryGetProperty(key, out var v)
                ? v.ValueKind == JsonValueKind.String ? v.GetString() : v.ValueKind == JsonValueKind.Object && v.TryGetProperty("content", out var cc) ? cc.GetString() : null
                : null;
            if (tok is null) return null;
            if (added.TryGetValue(tok, out int id)) return id;
            int i = Array.IndexOf(tokens, tok);
            return i >= 0 ? i : null;
        }
        bool? Flag(string key) => config is { } c && c.TryGetProperty(key, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : null;
        string? template = config is { } cfg && cfg.TryGetProperty("chat_template", out var ct) && ct.ValueKind == JsonValueKind.String ? ct.GetString() : null;
        int firstUnknown = Array.FindIndex(types, t => t == (int)GgufTokenType.Unknown);
        int? unk = Id("unk_token") ?? (firstUnknown >= 0 ? firstUnknown : null);
        if (byteLevel)
            return new GgufVocab("gpt2", tokens, null, types, Id("bos_token"), Id("eos_token"), Id("unk_token"), Id("pad_token"),
                Flag("add_bos_token"), Flag("add_eos_token"), template) { Merges = merges, Pre = pre };
        return new GgufVocab("llama", tokens, scores, types, Id("bos_token"), Id("eos_token"), unk, Id("pad_token"),
            Flag("add_bos_token"), Flag("add_eos_token"), template);
    }

    static IEnumerable<(int Id, string Content, bool Special)> AddedTokens(JsonElement? config, JsonElement? json)
    {
        static bool Special(JsonElement a) => a.TryGetProperty("special", out var s) && s.ValueKind == JsonValueKind.True;
        if (config is { } c && c.TryGetProperty("added_tokens_decoder", out var d) && d.ValueKind == JsonValueKind.Object)
        {
            foreach (var p in d.EnumerateObject())
                yield return (int.Parse(p.Name, System.Globalization.CultureInfo.InvariantCulture), p.Value.GetProperty("content").GetString()!, Special(p.Value));
            yield break;
        }
        if (json is { } j && j.TryGetProperty("added_tokens", out var at) && at.ValueKind == JsonValueKind.Array)
            foreach (var a in at.EnumerateArray())
                yield return (a.GetProperty("id").GetInt32(), a.GetProperty("content").GetString()!, Special(a));
    }

    static bool IsByteLevel(JsonElement root)
    {
        var m = root.GetProperty("model");
        bool byteFallback = m.TryGetProperty("byte_fallback", out var bf) && bf.ValueKind == JsonValueKind.True;
        string pre = root.TryGetProperty("pre_tokenizer", out var p) && p.ValueKind == JsonValueKind.Object ? p.GetRawText() : "";
        return !byteFallback && pre.Contains("\"ByteLevel\"", StringComparison.Ordinal);
    }

    /// <summary>llama.cpp picks its pre-tokenizer by name, not by regex: a byte-level tokenizer whose
    /// split regex it has no name for is refused rather than written with a wrong one.</summary>
    static string PreTokenizerName(JsonElement root, string path)
    {
        var pre = root.GetProperty("pre_tokenizer");
        var steps = pre.GetProperty("type").GetString() == "Sequence" ? pre.GetProperty("pretokenizers").EnumerateArray().ToList() : [pre];
        var split = steps.FirstOrDefault(s => s.GetProperty("type").GetString() == "Split");
        if (split.ValueKind == JsonValueKind.Undefined)
        {
            var level = steps.Single(s => s.GetProperty("type").GetString() == "ByteLevel");
            if (steps.Count == 1 && level.TryGetProperty("use_regex", out var ur) && ur.ValueKind != JsonValueKind.False) return "gpt-2";
        }
        else if (split.GetProperty("pattern").TryGetProperty("Regex", out var rx) && PreTokenizers.TryGetValue(rx.GetString()!, out var name))
            return name;
        throw new DotQuantException(ErrorCodes.GgufUnsupported,
            $"the byte-level pre-tokenizer {pre.GetRawText()} has no llama.cpp name (known: GPT-2's, Qwen2's and Llama 3's)", path);
    }

    /// <summary>Byte-level pieces as they are (Ġ for spaces), normal tokens; returns the merges as "a b".</summary>
    static string[] ByteLevelVocab(JsonElement root, string[] tokens, int[] types)
    {
        var m = root.GetProperty("model");
        foreach (var v in m.GetProperty("vocab").EnumerateObject())
        {
            int id = v.Value.GetInt32();
            if (id >= tokens.Length) continue;
            tokens[id] = v.Name;
            types[id] = (int)GgufTokenType.Normal;
        }
        return m.GetProperty("merges").EnumerateArray()
            .Select(e => e.ValueKind == JsonValueKind.Array ? e[0].GetString() + " " + e[1].GetString() : e.GetString()!)
            .ToArray();
    }

    static void CheckSentencePieceStyle(JsonElement root, string path)
    {
        var m = root.GetProperty("model");
        string type = m.TryGetProperty("type", out var t) ? t.GetString() ?? "" : "BPE";
        bool byteFallback = m.TryGetProperty("byte_fallback", out var bf) && bf.ValueKind == JsonValueKind.True;
        string pre = root.TryGetProperty("pre_tokenizer", out var p) && p.ValueKind == JsonValueKind.Object ? p.GetRawText() : "";
        if (type != "BPE" || !byteFallback || pre.Contains("ByteLevel", StringComparison.Ordinal))
            throw new DotQuantException(ErrorCodes.GgufUnsupported,
                "only SentencePiece-style BPE tokenizers (byte fallback, ▁ for spaces) are written to GGUF so far; byte-level BPE (GPT-2 style) is not yet", path);
    }

    static void FromMerges(JsonElement root, string[] tokens, float[] scores, int[] types)
    {
        var m = root.GetProperty("model");
        string? unk = m.TryGetProperty("unk_token", out var u) && u.ValueKind == JsonValueKind.String ? u.GetString() : null;
        foreach (var v in m.GetProperty("vocab").EnumerateObject())
        {
            int id = v.Value.GetInt32();
            if (id >= tokens.Length) continue;
            tokens[id] = v.Name;
            scores[id] = 0;
            types[id] = v.Name == unk ? (int)GgufTokenType.Unknown : BytePiece.IsMatch(v.Name) ? (int)GgufTokenType.Byte : (int)GgufTokenType.Normal;
        }
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < tokens.Length; i++) index.TryAdd(tokens[i], i);
        int rank = 0;
        var scored = new HashSet<int>();
        foreach (var e in m.GetProperty("merges").EnumerateArray())
        {
            string merged = e.ValueKind == JsonValueKind.Array ? e[0].GetString() + e[1].GetString() : e.GetString()!.Replace(" ", "");
            rank++;
            if (index.TryGetValue(merged, out int id) && scored.Add(id)) scores[id] = -rank;
        }
    }

    static JsonElement? TokenizerConfig(string dir)
    {
        string p = Path.Combine(dir, "tokenizer_config.json");
        if (!File.Exists(p)) return null;
        using var doc = JsonDocument.Parse(File.ReadAllBytes(p));
        return doc.RootElement.Clone();
    }
}
