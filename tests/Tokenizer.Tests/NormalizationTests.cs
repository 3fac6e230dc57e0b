using System.Text;
using DotQuant.Engine.Tokenization;

namespace DotQuant.Tokenizer.Tests;

/// <summary>NFC as the tokenizers library applies it (Unicode 9.0 tables), checked code point by
/// code point through Qwen3's tokenizer (normalizer NFC, byte-level, so ids spell the bytes).</summary>
public sealed class NormalizationTests
{
    [Fact]
    public void Every_code_point_normalizes_as_the_library_does_in_mark_contexts()
    {
        using var pair = TokenizerPair.Open("qwen3");
        var differing = new List<string>();
        // Marks of combining class 1, 220, 230 and 240 around the code point: any class ≠ 0 reorders
        // against one of them; a decomposable code point is tried decomposed (new compositions).
        string[] marks = ["\u0334", "\u0316", "\u0301", "\u0345"];
        for (int cp = 0xA0; cp < 0x110000; cp++)
        {
            if (cp is >= 0xD800 and <= 0xDFFF) continue;
            string c = char.ConvertFromUtf32(cp);
            var contexts = new List<string> { c, HfNormalization.Normalize(c, NormalizationForm.FormD) };
            foreach (var m in marks) { contexts.Add("a" + c + m); contexts.Add("a" + m + c); }
            foreach (var x in contexts.Distinct())
            {
                // Text that NFC leaves alone in both libraries needs no comparison.
                if (HfNormalization.Normalize(x, NormalizationForm.FormC) == x && HfNormalization.Normalize(x, NormalizationForm.FormD) == x) continue;
                if (!pair.Agrees(x)) { differing.Add($"U+{cp:X4} in {Minimizer.Describe(x)}"); break; }
            }
        }
        Assert.True(differing.Count == 0, $"{differing.Count} code points normalize differently: {string.Join(", ", differing.Take(40))}");
    }

    [Fact]
    public void Lone_surrogates_and_noncharacters_pass_through()
    {
        foreach (var s in new[] { "a\uD800b", "\uDC00", "x\uFFFEy\u0301", "e\u0301\uFFFF" })
            Assert.Equal(s.Replace("e\u0301", "é").Replace("y\u0301", "ý"), HfNormalization.Normalize(s, NormalizationForm.FormC));
    }
}
