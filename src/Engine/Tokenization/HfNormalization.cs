using System.Text;
using DotQuant.Runtime;

namespace DotQuant.Engine.Tokenization;

/// <summary>Unicode normalization as the Hugging Face tokenizers library does it. The library
/// normalizes with the unicode-normalization-alignments crate, whose tables are Unicode 9.0;
/// .NET normalizes with the platform's ICU (Unicode 15 here). Combining marks added since 9.0
/// (and the parts of compositions added since) are, to the library, starters that neither
/// reorder nor compose, so they cut the text into pieces normalized separately; U+FFFE, which
/// ICU refuses, is kept as it is. Measured against the library code point by code point
/// (tests/Tokenizer.Tests); a newer ICU may add marks of Unicode 16 the table does not list,
/// which the differential fuzzer would report.</summary>
public static class HfNormalization
{
    // Code points whose canonical combining class or composition is unknown to Unicode 9.0
    // (or that ICU rejects), as ranges.
    static readonly (int Lo, int Hi)[] Opaque =
    [
        (0x07FD, 0x07FD), (0x0898, 0x089F), (0x08CA, 0x08D3), (0x09FE, 0x09FE), (0x0C3C, 0x0C3C), (0x0D3B, 0x0D3C),
        (0x0EBA, 0x0EBA), (0x1715, 0x1715), (0x1ABF, 0x1ACE), (0x1DF6, 0x1DFA), (0xA82C, 0xA82C), (0xFFFE, 0xFFFE),
        (0x10D24, 0x10D27), (0x10EAB, 0x10EAC), (0x10EFD, 0x10EFF), (0x10F46, 0x10F50), (0x10F82, 0x10F85),
        (0x11070, 0x11070), (0x1133B, 0x1133B), (0x1145E, 0x1145E), (0x11839, 0x1183A), (0x11930, 0x11930),
        (0x11935, 0x11935), (0x1193D, 0x1193E), (0x11943, 0x11943), (0x119E0, 0x119E0), (0x11A34, 0x11A34),
        (0x11A47, 0x11A47), (0x11A99, 0x11A99), (0x11D42, 0x11D42), (0x11D44, 0x11D45), (0x11D97, 0x11D97),
        (0x11F41, 0x11F42), (0x16FF0, 0x16FF1), (0x1E08F, 0x1E08F), (0x1E130, 0x1E136), (0x1E2AE, 0x1E2AE),
        (0x1E2EC, 0x1E2EF), (0x1E4EC, 0x1E4EF),
    ];

    public static string Normalize(string s, NormalizationForm form)
    {
        // Pure ASCII is in every normal form.
        if (s.AsSpan().IndexOfAnyExceptInRange('\0', '\u007F') < 0) return s;
        if (!Available.Value)
            throw new DotQuantException(ErrorCodes.TokenizerUnsupported,
                "this tokenizer normalizes Unicode (NFC/NFD/NFKC/NFKD), which needs ICU, but the process runs with invariant globalization " +
                "(DOTNET_SYSTEM_GLOBALIZATION_INVARIANT or <InvariantGlobalization>); install libicu and turn invariant mode off");
        var sb = (StringBuilder?)null;
        int start = 0;
        for (int i = 0; i < s.Length;)
        {
            int width = char.IsSurrogatePair(s, i) ? 2 : 1;
            // A lone surrogate cannot be normalized either (ICU refuses it); it passes through.
            if (width == 1 && char.IsSurrogate(s[i]) || IsOpaque(width == 2 ? char.ConvertToUtf32(s[i], s[i + 1]) : s[i]))
            {
                sb ??= new StringBuilder(s.Length);
                sb.Append(NormalizePiece(s[start..i], form)).Append(s, i, width);
                start = i + width;
            }
            i += width;
        }
        if (sb is null) return NormalizePiece(s, form);
        return sb.Append(NormalizePiece(s[start..], form)).ToString();
    }

    // Invariant globalization makes string.Normalize return non-ASCII text unchanged, silently.
    static readonly Lazy<bool> Available = new(() => "e\u0301".Normalize(NormalizationForm.FormC) == "\u00E9");

    static string NormalizePiece(string s, NormalizationForm form) => s.Length == 0 ? s : s.Normalize(form);

    static bool IsOpaque(int cp)
    {
        if (cp < Opaque[0].Lo) return false;
        int lo = 0, hi = Opaque.Length - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >> 1;
            if (cp < Opaque[mid].Lo) hi = mid - 1;
            else if (cp > Opaque[mid].Hi) lo = mid + 1;
            else return true;
        }
        return false;
    }
}
