using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using DotQuant.Runtime;

namespace DotQuant.Engine.Tokenization;

/// <summary>The normalizers, pre-tokenizers and decoders of tokenizer.json that Llama-family and
/// GPT-2-style tokenizers use, each as a small function built from its JSON object. An
/// unknown type is a DQ0132 error naming it rather than a silently different tokenization.</summary>
internal static class TextPipeline
{
    // ---------- normalizers: string -> string ----------

    public static Func<string, string> Normalizer(JsonElement n, string path)
    {
        if (n.ValueKind == JsonValueKind.Null) return s => s;
        string type = Type(n, "normalizer", path);
        switch (type)
        {
            case "Sequence":
                var parts = n.GetProperty("normalizers").EnumerateArray().Select(e => Normalizer(e, path)).ToArray();
                return s => parts.Aggregate(s, (acc, f) => f(acc));
            case "Prepend":
                string prefix = n.GetProperty("prepend").GetString()!;
                return s => s.Length == 0 ? s : prefix + s;
            case "Replace":
                var replace = Replacer(n, path);
                return replace;
            case "NFC": return s => HfNormalization.Normalize(s, NormalizationForm.FormC);
            case "NFD": return s => HfNormalization.Normalize(s, NormalizationForm.FormD);
            case "NFKC": return s => HfNormalization.Normalize(s, NormalizationForm.FormKC);
            case "NFKD": return s => HfNormalization.Normalize(s, NormalizationForm.FormKD);
            case "Lowercase": return s => s.ToLowerInvariant();
            case "Strip":
                bool left = Bool(n, "strip_left", true), right = Bool(n, "strip_right", true);
                return s => left && right ? s.Trim() : left ? s.TrimStart() : right ? s.TrimEnd() : s;
            default:
                throw Unsupported("normalizer", type, path);
        }
    }

    static Func<string, string> Replacer(JsonElement n, string path)
    {
        var pattern = n.GetProperty("pattern");
        string content = n.GetProperty("content").GetString()!;
        if (pattern.TryGetProperty("String", out var str))
        {
            string needle = str.GetString()!;
            return s => s.Replace(needle, content, StringComparison.Ordinal);
        }
        if (pattern.TryGetProperty("Regex", out var rx))
        {
            var regex = new CodePointRegex(rx.GetString()!);
            return s =>
            {
                var sb = new StringBuilder(s.Length);
                int last = 0;
                foreach (var (start, length) in regex.Matches(s))
                {
                    sb.Append(s, last, start - last).Append(content);
                    last = start + length;
                }
                return sb.Append(s, last, s.Length - last).ToString();
            };
        }
        throw new DotQuantException(ErrorCodes.TokenizerMalformed, "Replace has neither a String nor a Regex pattern", path);
    }

    // ---------- pre-tokenizers: list of pieces -> list of pieces ----------

    /// <summary>A pre-tokenizer as (segment, startsAtTextStart) → pieces; the flag is what
    /// Metaspace's prepend_scheme "first" looks at.</summary>
    public static Func<string, bool, IEnumerable<string>> PreTokenizer(JsonElement p, string path, out bool byteLevel)
    {
        byteLevel = false;
        if (p.ValueKind == JsonValueKind.Null) return (s, _) => [s];
        string type = Type(p, "pre_tokenizer", path);
        switch (type)
        {
            case "Sequence":
            {
                var steps = new List<Func<string, bool, IEnumerable<string>>>();
                foreach (var e in p.GetProperty("pretokenizers").EnumerateArray())
                {
                    steps.Add(PreTokenizer(e, path, out bool bl));
                    byteLevel |= bl;
                }
                return (s, atStart) =>
                {
                    IEnumerable<string> pieces = [s];
                    foreach (var step in steps)
                        pieces = pieces.SelectMany((piece, i) => step(piece, atStart && i == 0)).ToList();
                    return pieces;
                };
            }
            case "Split":
            {
                var pattern = p.GetProperty("pattern");
                var regex = new CodePointRegex(pattern.TryGetProperty("Regex", out var rx)
                    ? rx.GetString()!
                    : Regex.Escape(pattern.GetProperty("String").GetString()!));
                string behavior = p.TryGetProperty("behavior", out var b) ? b.GetString()! : "Isolated";
                bool invert = Bool(p, "invert", false);
                return (s, _) => Split(s, regex, behavior, invert, path);
            }
            case "ByteLevel":
            {
                byteLevel = true;
                bool addPrefixSpace = Bool(p, "add_prefix_space", false);
                bool useRegex = Bool(p, "use_regex", true);
                return (s, _) =>
                {
                    if (addPrefixSpace && s.Length > 0 && s[0] != ' ') s = " " + s;
                    var pieces = useRegex ? Split(s, Gpt2Pattern, "Isolated", false, path) : [s];
                    return pieces.Select(piece => ByteLevelAlphabet.Encode(Encoding.UTF8.GetBytes(piece)));
                };
            }
            case "Metaspace":
            {
                string replacement = p.TryGetProperty("replacement", out var r) ? r.GetString()! : "▁";
                string scheme = p.TryGetProperty("prepend_scheme", out var ps) ? ps.GetString()! : (Bool(p, "add_prefix_space", true) ? "always" : "never");
                bool split = Bool(p, "split", true);
                // "first" prepends only to a segment that starts the original text, not to one
                // that follows an added token.
                return (s, atStart) =>
                {
                    s = s.Replace(" ", replacement, StringComparison.Ordinal);
                    bool prepend = scheme == "always" || (scheme == "first" && atStart);
                    if (prepend && !s.StartsWith(replacement, StringComparison.Ordinal)) s = replacement + s;
                    return split ? SplitBefore(s, replacement) : [s];
                };
            }
            case "Digits":
            {
                bool individual = Bool(p, "individual_digits", false);
                var regex = new CodePointRegex(individual ? @"\p{Nd}" : @"\p{Nd}+");
                return (s, _) => Split(s, regex, "Isolated", false, path);
            }
            case "WhitespaceSplit":
                return (s, _) => s.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            default:
                throw Unsupported("pre_tokenizer", type, path);
        }
    }

    static readonly CodePointRegex Gpt2Pattern = new(@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+");

    static IEnumerable<string> SplitBefore(string s, string marker)
    {
        int start = 0;
        for (int i = 1; i < s.Length; i++)
            if (string.CompareOrdinal(s, i, marker, 0, marker.Length) == 0)
            {
                yield return s[start..i];
                start = i;
            }
        if (start < s.Length) yield return s[start..];
    }

    /// <summary>transformers' SplitDelimiterBehavior on regex matches.</summary>
    static List<string> Split(string s, CodePointRegex regex, string behavior, bool invert, string path)
    {
        // Pieces as (text, isMatch) covering the whole string.
        var pieces = new List<(string Text, bool Match)>();
        int last = 0;
        foreach (var (start, length) in regex.Matches(s))
        {
            if (start > last) pieces.Add((s[last..start], invert));
            pieces.Add((s.Substring(start, length), !invert));
            last = start + length;
        }
        if (last < s.Length) pieces.Add((s[last..], invert));

        var result = new List<string>();
        switch (behavior)
        {
            case "Isolated":
                result.AddRange(pieces.Select(p => p.Text));
                break;
            case "Removed":
                result.AddRange(pieces.Where(p => !p.Match).Select(p => p.Text));
                break;
            case "MergedWithPrevious":
                foreach (var p in pieces)
                    if (p.Match && result.Count > 0) result[^1] += p.Text; else result.Add(p.Text);
                break;
            case "MergedWithNext":
                string? pending = null;
                foreach (var p in pieces)
                {
                    if (p.Match) { pending = (pending ?? "") + p.Text; continue; }
                    result.Add((pending ?? "") + p.Text);
                    pending = null;
                }
                if (pending is not null) result.Add(pending);
                break;
            case "Contiguous":
                bool previousMatched = false;
                foreach (var p in pieces)
                {
                    if (p.Match && previousMatched) result[^1] += p.Text;
                    else result.Add(p.Text);
                    previousMatched = p.Match;
                }
                break;
            default:
                throw Unsupported("Split behavior", behavior, path);
        }
        return result;
    }

    // ---------- decoders: list of token strings -> list of strings ----------

    public static Func<List<string>, List<string>> Decoder(JsonElement d, string path)
    {
        if (d.ValueKind == JsonValueKind.Null) return t => t;
        string type = Type(d, "decoder", path);
        switch (type)
        {
            case "Sequence":
                var parts = d.GetProperty("decoders").EnumerateArray().Select(e => Decoder(e, path)).ToArray();
                return t => parts.Aggregate(t, (acc, f) => f(acc));
            case "Replace":
                var replace = Replacer(d, path);
                return t => t.Select(replace).ToList();
            case "ByteFallback":
                return ByteFallback;
            case "Fuse":
                return t => [string.Concat(t)];
            case "Strip":
            {
                string content = d.GetProperty("content").GetString()!;
                int start = d.GetProperty("start").GetInt32(), stop = d.GetProperty("stop").GetInt32();
                return t => t.Select(s => StripChars(s, content, start, stop)).ToList();
            }
            case "ByteLevel":
                return t =>
                {
                    var bytes = new List<byte>();
                    foreach (var s in t)
                        foreach (char c in s)
                            if (ByteLevelAlphabet.CharToByte.TryGetValue(c, out byte b)) bytes.Add(b);
                            else bytes.AddRange(Encoding.UTF8.GetBytes(c.ToString()));
                    return [Encoding.UTF8.GetString(bytes.ToArray())];
                };
            case "Metaspace":
            {
                string replacement = d.TryGetProperty("replacement", out var r) ? r.GetString()! : "▁";
                string scheme = d.TryGetProperty("prepend_scheme", out var ps) ? ps.GetString()! : "always";
                return t => t.Select((s, i) =>
                {
                    s = s.Replace(replacement, " ", StringComparison.Ordinal);
                    return i == 0 && scheme != "never" && s.StartsWith(' ') ? s[1..] : s;
                }).ToList();
            }
            default:
                throw Unsupported("decoder", type, path);
        }
    }

    /// <summary>Runs of &lt;0xXX&gt; tokens become the UTF-8 text they encode (U+FFFD per byte when invalid).</summary>
    static List<string> ByteFallback(List<string> tokens)
    {
        var result = new List<string>();
        var pending = new List<byte>();
        void Flush()
        {
            if (pending.Count == 0) return;
            var bytes = pending.ToArray();
            try
            {
                result.Add(new UTF8Encoding(false, true).GetString(bytes));
            }
            catch (DecoderFallbackException)
            {
                result.AddRange(bytes.Select(_ => "\uFFFD"));
            }
            pending.Clear();
        }
        foreach (var t in tokens)
        {
            if (t.Length == 6 && t.StartsWith("<0x", StringComparison.Ordinal) && t[5] == '>' &&
                byte.TryParse(t.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out byte b))
            {
                pending.Add(b);
                continue;
            }
            Flush();
            result.Add(t);
        }
        Flush();
        return result;
    }

    static string StripChars(string s, string content, int start, int stop)
    {
        int a = 0, z = s.Length;
        for (int i = 0; i < start && a < z && s.AsSpan(a).StartsWith(content); i++) a += content.Length;
        for (int i = 0; i < stop && z > a && s.AsSpan(a, z - a).EndsWith(content); i++) z -= content.Length;
        return s[a..z];
    }

    // ---------- helpers ----------

    static string Type(JsonElement e, string what, string path) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String
            ? t.GetString()!
            : throw new DotQuantException(ErrorCodes.TokenizerMalformed, $"{what} has no 'type'", path);

    static bool Bool(JsonElement e, string key, bool fallback) =>
        e.TryGetProperty(key, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : fallback;

    static DotQuantException Unsupported(string what, string type, string path) =>
        new(ErrorCodes.TokenizerUnsupported, $"tokenizer.json {what} '{type}' is not supported", path);
}
