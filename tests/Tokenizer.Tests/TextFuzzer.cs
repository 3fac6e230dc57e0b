using System.Globalization;
using System.Text;

namespace DotQuant.Tokenizer.Tests;

/// <summary>Seeded random Unicode text built from the pieces tokenizers get wrong: every plane,
/// combining marks, ZWJ emoji, whitespace runs and CRLF, contractions, digits, control
/// characters, added and special tokens inside text, and very long words. Only well-formed
/// UTF-16 (the reference library refuses lone surrogates, as Rust strings must).</summary>
public sealed class TextFuzzer(int seed, IReadOnlyList<string> addedTokens)
{
    readonly Random _rng = new(seed);

    static readonly string[] Whitespace = [" ", "  ", "\t", "\n", "\n\n", "\r\n", "\r", "\u00A0", "\u3000", "\u2028", "\u2009", "\u000B", "\f", "\u0085", "\u200B", " \n ", "   \t"];
    static readonly string[] Contractions = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "'Re", "’s", "'", "''", "n't"];
    static readonly string[] Emoji = ["👩‍👩‍👧‍👦", "🏳️‍🌈", "👍🏽", "❤️", "🧑‍💻", "🇫🇷", "1️⃣", "👨🏿‍🦰", "😀", "🫠", "©", "™"];
    static readonly (int Lo, int Hi)[] Scripts =
    [
        (0x61, 0x7A), (0x41, 0x5A), (0xC0, 0x24F), (0x391, 0x3C9), (0x410, 0x44F), (0x5D0, 0x5EA), (0x621, 0x64A),
        (0x905, 0x939), (0xE01, 0xE2E), (0x3041, 0x3096), (0x30A1, 0x30FA), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
        (0x1D400, 0x1D7FF), (0x20000, 0x2A6DF), (0x10400, 0x1044F), (0x1F300, 0x1FAFF),
    ];
    // Noncharacters, BOM, ZWJ/ZWNJ, bidi controls.
    static readonly int[] Specials = [0xFFFE, 0xFFFF, 0xFEFF, 0x200D, 0x200C, 0x202E, 0x1FFFE, 0x10FFFF];
    static readonly (int Lo, int Hi)[] Combining = [(0x300, 0x36F), (0x1AB0, 0x1ABE), (0x1DC0, 0x1DFF), (0x20D0, 0x20F0), (0xFE20, 0xFE2F)];

    public string Next()
    {
        var sb = new StringBuilder();
        int pieces = _rng.Next(1, 13);
        for (int p = 0; p < pieces; p++) AppendPiece(sb);
        return sb.ToString();
    }

    void AppendPiece(StringBuilder sb)
    {
        switch (_rng.Next(15))
        {
            case 0: sb.Append(Word(0x61, 0x7A, _rng.Next(1, 12))); break;
            case 1: sb.Append(' ', _rng.Next(1, 4)); break;
            case 2: for (int i = _rng.Next(1, 9); i > 0; i--) sb.Append((char)('0' + _rng.Next(10))); break;
            case 3: sb.Append("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"[_rng.Next(32)]); break;
            case 4: sb.Append(Whitespace[_rng.Next(Whitespace.Length)]); break;
            case 5: AppendCodePoint(sb, RandomBmp()); break;
            case 6: AppendCodePoint(sb, RandomAstral()); break;
            case 7:
                sb.Append(Word(0x61, 0x7A, 1));
                for (int i = _rng.Next(1, 4); i > 0; i--) { var (lo, hi) = Combining[_rng.Next(Combining.Length)]; AppendCodePoint(sb, _rng.Next(lo, hi + 1)); }
                break;
            case 8: sb.Append(Emoji[_rng.Next(Emoji.Length)]); break;
            case 9: if (addedTokens.Count > 0) sb.Append(addedTokens[_rng.Next(addedTokens.Count)]); break;
            case 10:
            {
                var (lo, hi) = Scripts[_rng.Next(Scripts.Length)];
                sb.Append(Word(lo, hi, _rng.Next(200, 3000)));
                break;
            }
            case 11: sb.Append(Contractions[_rng.Next(Contractions.Length)]); break;
            case 12:
            {
                var (lo, hi) = Scripts[_rng.Next(Scripts.Length)];
                sb.Append(Word(lo, hi, _rng.Next(1, 10)));
                break;
            }
            case 13: AppendCodePoint(sb, _rng.Next(4) switch { 0 => 0x7F, 1 => Specials[_rng.Next(Specials.Length)], _ => _rng.Next(0, 0x20) }); break;
            default: sb.Append(" ").Append(Word(0x61, 0x7A, _rng.Next(1, 8))); break;
        }
    }

    string Word(int lo, int hi, int length)
    {
        var sb = new StringBuilder(length);
        for (int i = 0; i < length; i++) AppendCodePoint(sb, _rng.Next(lo, hi + 1));
        return sb.ToString();
    }

    int RandomBmp()
    {
        while (true)
        {
            int c = _rng.Next(0x80, 0x10000);
            if (c is < 0xD800 or > 0xDFFF) return c;
        }
    }

    int RandomAstral() => _rng.Next(4) switch
    {
        0 => _rng.Next(0x10000, 0x20000),        // SMP: historic scripts, math alphanumerics, emoji
        1 => _rng.Next(0x20000, 0x32000),        // SIP/TIP: CJK extensions
        2 => _rng.Next(0xE0000, 0xE0200),        // tags, variation selectors supplement
        _ => _rng.Next(0xF0000, 0x110000),       // private use planes
    };

    static void AppendCodePoint(StringBuilder sb, int cp)
    {
        if (cp is >= 0xD800 and <= 0xDFFF) cp = 0xFFFD;
        sb.Append(char.ConvertFromUtf32(cp));
    }
}
