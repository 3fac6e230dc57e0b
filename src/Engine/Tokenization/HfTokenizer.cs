using System.Text.Json;
using DotQuant.Runtime;

namespace DotQuant.Engine.Tokenization;

/// <summary>A Hugging Face <c>tokenizer.json</c> with a BPE model: SentencePiece-style BPE with
/// byte fallback and ▁ (Llama 1/2, Mistral, stories260K) and byte-level BPE (GPT-2, Qwen2,
/// Llama 3). Encoding follows the tokenizers library: added tokens are split out first, each
/// remaining segment is normalized, pre-tokenized and BPE-encoded.
/// Microsoft.ML.Tokenizers' BpeTokenizer has neither byte fallback nor ignore_merges nor a
/// tokenizer.json loader, so the BPE core is our own (it is ~150 lines and is checked against
/// the reference ids of the shared models).</summary>
public sealed class HfTokenizer
{
    readonly BpeModel _model;
    readonly Func<string, string> _normalize;
    readonly Func<string, bool, IEnumerable<string>> _preTokenize;
    readonly Func<List<string>, List<string>> _decode;
    readonly AddedToken[] _added;             // longest first, for leftmost-longest matching
    readonly Dictionary<int, AddedToken> _addedById;
    readonly HashSet<char> _addedFirstChars;

    sealed record AddedToken(int Id, string Content, bool Special, bool LStrip, bool RStrip);

    public int? BosTokenId { get; }
    public int? EosTokenId { get; }
    public int VocabSize => Math.Max(_model.VocabSize, _addedById.Count == 0 ? 0 : _addedById.Keys.Max() + 1);

    HfTokenizer(BpeModel model, Func<string, string> normalize, Func<string, bool, IEnumerable<string>> preTokenize,
        Func<List<string>, List<string>> decode, List<AddedToken> added, int? bos, int? eos)
    {
        _model = model; _normalize = normalize; _preTokenize = preTokenize; _decode = decode;
        _added = added.OrderByDescending(a => a.Content.Length).ToArray();
        _addedById = added.ToDictionary(a => a.Id);
        _addedFirstChars = added.Where(a => a.Content.Length > 0).Select(a => a.Content[0]).ToHashSet();
        BosTokenId = bos; EosTokenId = eos;
    }

    /// <summary>Loads <c>tokenizer.json</c> from a model folder (BOS/EOS from tokenizer_config.json
    /// or config.json when present).</summary>
    public static HfTokenizer Load(string modelDir)
    {
        string path = Path.Combine(modelDir, "tokenizer.json");
        if (!File.Exists(path))
            throw new DotQuantException(ErrorCodes.TokenizerMissing, $"tokenizer.json not found in {modelDir} (only tokenizer.json is supported; convert a SentencePiece tokenizer.model with transformers' LlamaTokenizerFast)", path);
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            var (bos, eos) = SpecialIds(modelDir);
            return Parse(doc.RootElement, path, bos, eos);
        }
        catch (JsonException e)
        {
            throw new DotQuantException(ErrorCodes.TokenizerMalformed, $"tokenizer.json is not well-formed JSON: {e.Message}", path);
        }
        catch (Exception e) when (e is KeyNotFoundException or InvalidOperationException or FormatException or ArgumentException)
        {
            throw new DotQuantException(ErrorCodes.TokenizerMalformed, $"tokenizer.json is missing a field or has one of the wrong type: {e.Message}", path);
        }
    }

    static HfTokenizer Parse(JsonElement root, string path, string? bosToken, string? eosToken)
    {
        var m = root.GetProperty("model");
        string type = m.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "BPE";
        if (type != "BPE")
            throw new DotQuantException(ErrorCodes.TokenizerUnsupported, $"tokenizer model '{type}' is not supported (only BPE)", path);
        if (m.TryGetProperty("continuing_subword_prefix", out var csp) && csp.ValueKind == JsonValueKind.String && csp.GetString() != "" ||
            m.TryGetProperty("end_of_word_suffix", out var eow) && eow.ValueKind == JsonValueKind.String && eow.GetString() != "")
            throw new DotQuantException(ErrorCodes.TokenizerUnsupported, "BPE continuing_subword_prefix / end_of_word_suffix are not supported", path);
        if (m.TryGetProperty("dropout", out var dropout) && dropout.ValueKind == JsonValueKind.Number && dropout.GetDouble() > 0)
            throw new DotQuantException(ErrorCodes.TokenizerUnsupported, "BPE dropout makes tokenization random; it is not supported", path);

        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var v in m.GetProperty("vocab").EnumerateObject()) vocab[v.Name] = TokenId(v.Value.GetInt32(), v.Name, path);
        var merges = new List<(string, string)>();
        foreach (var e in m.GetProperty("merges").EnumerateArray())
        {
            if (e.ValueKind == JsonValueKind.Array)
                merges.Add((e[0].GetString()!, e[1].GetString()!));
            else
            {
                string s = e.GetString()!;
                int sp = s.IndexOf(' ', 1);  // a merge of "▁ x" style strings: split at the first space after position 0
                if (sp < 0) throw new DotQuantException(ErrorCodes.TokenizerMalformed, $"merge '{s}' has no space", path);
                merges.Add((s[..sp], s[(sp + 1)..]));
            }
        }
        string? unk = m.TryGetProperty("unk_token", out var u) && u.ValueKind == JsonValueKind.String ? u.GetString() : null;
        bool Flag(string k) => m.TryGetProperty(k, out var f) && f.ValueKind == JsonValueKind.True;
        var model = new BpeModel(vocab, merges, unk, Flag("fuse_unk"), Flag("byte_fallback"), Flag("ignore_merges"));

        var added = new List<AddedToken>();
        if (root.TryGetProperty("added_tokens", out var at) && at.ValueKind == JsonValueKind.Array)
            foreach (var a in at.EnumerateArray())
                added.Add(new AddedToken(TokenId(a.GetProperty("id").GetInt32(), "added token", path), a.GetProperty("content").GetString()!,
                    a.TryGetProperty("special", out var sp) && sp.GetBoolean(),
                    a.TryGetProperty("lstrip", out var ls) && ls.GetBoolean(),
                    a.TryGetProperty("rstrip", out var rs) && rs.GetBoolean()));

        var normalize = TextPipeline.Normalizer(Prop(root, "normalizer"), path);
        var preTokenize = TextPipeline.PreTokenizer(Prop(root, "pre_tokenizer"), path, out _);
        var decode = TextPipeline.Decoder(Prop(root, "decoder"), path);

        int? Lookup(string? tok) => tok is null ? null : added.FirstOrDefault(a => a.Content == tok)?.Id ?? (vocab.TryGetValue(tok, out int id) ? id : null);
        return new HfTokenizer(model, normalize, preTokenize, decode, added, Lookup(bosToken), Lookup(eosToken));
    }

    static JsonElement Prop(JsonElement e, string name) => e.TryGetProperty(name, out var v) ? v : default;

    /// <summary>The largest vocabularies in use have a few hundred thousand entries; the id table is
    /// allocated from the largest id, so a hostile file claiming id 2³¹−1 must be refused, not allocated
    /// (found by the fuzzer, as was a negative id indexing before the table).</summary>
    const int MaxTokenId = 1 << 24;

    static int TokenId(int id, string token, string path) =>
        id is >= 0 and < MaxTokenId ? id : throw new DotQuantException(ErrorCodes.TokenizerMalformed, $"token id {id} of '{Shorten(token)}' is outside 0..{MaxTokenId - 1}", path);

    static string Shorten(string s) => s.Length <= 40 ? s : s[..40] + "…";

    /// <summary>BOS/EOS token strings from tokenizer_config.json (string or {content}).</summary>
    static (string? Bos, string? Eos) SpecialIds(string dir)
    {
        string p = Path.Combine(dir, "tokenizer_config.json");
        if (!File.Exists(p)) return (null, null);
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(p));
            string? Tok(string key) =>
                doc.RootElement.TryGetProperty(key, out var v)
                    ? v.ValueKind == JsonValueKind.String ? v.GetString()
                    : v.ValueKind == JsonValueKind.Object && v.TryGetProperty("content", out var c) ? c.GetString() : null
                    : null;
            return (Tok("bos_token"), Tok("eos_token"));
        }
        catch (JsonException e)
        {
            throw new DotQuantException(ErrorCodes.TokenizerMalformed, $"tokenizer_config.json is not well-formed JSON: {e.Message}", p);
        }
    }

    /// <summary>Token ids for <paramref name="text"/>, without BOS/EOS (the GPTQ protocol).</summary>
    /// <param name="parseSpecial">Match special added tokens (&lt;unk&gt;, &lt;s&gt;, …) written in the text; false
    /// tokenizes them as text, as llama.cpp does by default (parse_special = false) and Hugging Face with
    /// split_special_tokens.</param>
    public int[] Encode(string text, bool addBos = false, bool parseSpecial = true)
    {
        var ids = new List<int>(text.Length / 3 + 1);
        if (addBos)
        {
            if (BosTokenId is null) throw new DotQuantException(ErrorCodes.TokenizerMalformed, "the tokenizer defines no BOS token");
            ids.Add(BosTokenId.Value);
        }
        bool atStart = true;
        foreach (var (segment, addedId) in SplitAdded(text, parseSpecial))
        {
            if (addedId is int id) { ids.Add(id); atStart = false; continue; }
            string normalized = _normalize(segment);
            foreach (var piece in _preTokenize(normalized, atStart))
                _model.Encode(piece, ids);
            atStart = false;
        }
        return ids.ToArray();
    }

    /// <summary>Splits out added tokens (leftmost, longest first), honouring lstrip/rstrip.</summary>
    IEnumerable<(string Segment, int? Id)> SplitAdded(string text, bool parseSpecial)
    {
        if (_added.Length == 0) { yield return (text, null); yield break; }
        int start = 0, pos = 0;
        while (pos < text.Length)
        {
            if (!_addedFirstChars.Contains(text[pos])) { pos++; continue; }
            AddedToken? hit = null;
            foreach (var a in _added)
                if (a.Content.Length > 0 && (parseSpecial || !a.Special) && string.CompareOrdinal(text, pos, a.Content, 0, a.Content.Length) == 0) { hit = a; break; }
            if (hit is null) { pos++; continue; }
            int segEnd = pos;
            if (hit.LStrip) while (segEnd > start && char.IsWhiteSpace(text[segEnd - 1])) segEnd--;
            if (segEnd > start) yield return (text[start..segEnd], null);
            yield return (hit.Content, hit.Id);
            pos += hit.Content.Length;
            if (hit.RStrip) while (pos < text.Length && char.IsWhiteSpace(text[pos])) pos++;
            start = pos;
        }
        if (start < text.Length) yield return (text[start..], null);
    }

    /// <summary>A token's piece as the vocabulary spells it (byte-level Ġ, SentencePiece ▁, added tokens
    /// as written), or null when the id is outside the vocabulary.</summary>
    public string? Piece(int id) => _addedById.TryGetValue(id, out var a) ? a.Content : _model.IdToToken(id);

    public string Decode(IEnumerable<int> ids, bool skipSpecial = true)
    {
        var tokens = new List<string>();
        foreach (int id in ids)
        {
            if (_addedById.TryGetValue(id, out var a))
            {
                if (!(skipSpecial && a.Special)) tokens.Add(a.Content);
                continue;
            }
            tokens.Add(_model.IdToToken(id) ?? throw new ArgumentOutOfRangeException(nameof(ids), $"token id {id} is outside the vocabulary"));
        }
        return string.Concat(_decode(tokens));
    }
}
