using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace DotQuant.Engine.Tokenization;

/// <summary>A pre-tokenizer regex matched over code points, as Oniguruma (the Hugging Face
/// tokenizers library) matches it. .NET's regex classifies UTF-16 code units, so a letter
/// outside the Basic Multilingual Plane (𝔘, 𝟙, CJK Extension B) is two surrogates and neither
/// \p{L} nor \p{N}. Before matching, each surrogate pair is replaced by one BMP character of
/// the same general category, so every \p{..} class, \s, quantifier and count ({1,3} digits)
/// sees one character per code point; match positions are mapped back to the original text.
/// Text without surrogates (nearly all of it) goes to the regex untouched.</summary>
public sealed class CodePointRegex
{
    readonly Regex _regex;

    public CodePointRegex(string pattern) =>
        _regex = new Regex(pattern, RegexOptions.CultureInvariant | RegexOptions.Compiled);

    /// <summary>Non-empty matches as (start, length) in UTF-16 units of <paramref name="s"/>.</summary>
    public List<(int Start, int Length)> Matches(string s)
    {
        var result = new List<(int, int)>();
        if (!HasSurrogate(s))
        {
            for (var m = _regex.Match(s); m.Success; m = m.NextMatch())
                if (m.Length > 0) result.Add((m.Index, m.Length));
            return result;
        }
        // offsets[i] = position in s of the i-th character of the stand-in text (one entry past the end).
        var standIn = new StringBuilder(s.Length);
        var offsets = new int[s.Length + 1];
        int n = 0;
        for (int i = 0; i < s.Length; n++)
        {
            offsets[n] = i;
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
            {
                standIn.Append(StandIn[(int)CharUnicodeInfo.GetUnicodeCategory(char.ConvertToUtf32(s[i], s[i + 1]))]);
                i += 2;
            }
            else standIn.Append(s[i++]);
        }
        offsets[n] = s.Length;
        for (var m = _regex.Match(standIn.ToString()); m.Success; m = m.NextMatch())
            if (m.Length > 0)
            {
                int start = offsets[m.Index];
                result.Add((start, offsets[m.Index + m.Length] - start));
            }
        return result;
    }

    static bool HasSurrogate(string s)
    {
        foreach (char c in s)
            if (char.IsSurrogate(c)) return true;
        return false;
    }

    /// <summary>Per general category, the highest BMP character of that category: far from the
    /// ASCII a pattern spells out, and no case-fold partner of ASCII (so (?i:'s) stays exact).</summary>
    static readonly char[] StandIn = BuildStandIns();

    static char[] BuildStandIns()
    {
        int count = Enum.GetValues<UnicodeCategory>().Length;
        var map = new char[count];
        Array.Fill(map, '\uFFFD');
        var found = new bool[count];
        for (int c = 0xFFFF; c >= 0x80; c--)
        {
            if (c is >= 0xD800 and <= 0xDFFF) continue;
            int cat = (int)CharUnicodeInfo.GetUnicodeCategory((char)c);
            if (found[cat]) continue;
            found[cat] = true;
            map[cat] = (char)c;
        }
        return map;
    }
}
