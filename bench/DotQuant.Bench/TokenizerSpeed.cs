using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;
using DotQuant.Engine.Tokenization;
using Reference = Tokenizers.DotNet.Tokenizer;

namespace DotQuant.Bench;

/// <summary>Tokenizer throughput: DotQuant's encoder against the Hugging Face tokenizers library (Rust,
/// through Tokenizers.DotNet) on the same text in the same run, and the pre-tokenizer split alone with
/// .NET's code-unit regex (what DotQuant used before code-point categories) against CodePointRegex.</summary>
static class TokenizerSpeed
{
    public const string Marker = "tokenizers";
    const string Llama3Pattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    public static string Run(string shared, bool quick)
    {
        string wiki = File.ReadAllText(Path.Combine(shared, "data", "wikitext2", "wiki.test.raw"));
        if (quick) wiki = wiki[..200_000];
        string astral = WithAstralWords(wiki);
        var sb = new StringBuilder();
        sb.AppendLine("## Tokenizers");
        sb.AppendLine();
        sb.AppendLine($"Produced by `dotnet run -c Release --project bench/DotQuant.Bench -- tokenizers` on {DateTime.UtcNow:yyyy-MM-dd} ({Environment.ProcessorCount} cores).");
        sb.AppendLine($"Text: WikiText-2 test raw ({wiki.Length:N0} characters), and the same text with every 7th word spelled in mathematical alphanumerics (U+1D400…, outside the BMP: the code-point path). Best of 3, a fresh tokenizer each time (no warm BPE cache); ids identical to the library's in every row (checked).");
        sb.AppendLine();
        sb.AppendLine("| tokenizer | text | tokens | DotQuant tokens/s | tokenizers library tokens/s | ratio |");
        sb.AppendLine("|---|---|---|---|---|---|");
        foreach (var (name, dir) in Folders(shared))
            foreach (var (label, text) in new[] { ("wiki", wiki), ("wiki + astral", astral) })
            {
                int[] ours = [];
                double oursSeconds = Best(() => { var t = HfTokenizer.Load(dir); var sw = Stopwatch.StartNew(); ours = t.Encode(text); return sw.Elapsed.TotalSeconds; });
                uint[] theirs = [];
                double theirsSeconds = Best(() => { using var t = new Reference(vocabPath: Path.Combine(dir, "tokenizer.json")); var sw = Stopwatch.StartNew(); theirs = t.Encode(text); return sw.Elapsed.TotalSeconds; });
                var theirsIds = theirs.Select(i => (int)i).ToArray();
                // SentencePiece vocabularies: the library's post-processor adds BOS.
                if (theirsIds.Length == ours.Length + 1) theirsIds = theirsIds[1..];
                if (!theirsIds.AsSpan().SequenceEqual(ours)) throw new InvalidOperationException($"{name}/{label}: ids differ from the library");
                sb.AppendLine($"| {name} | {label} | {ours.Length:N0} | {ours.Length / oursSeconds:N0} | {ours.Length / theirsSeconds:N0} | {theirsSeconds / oursSeconds:F2} |");
            }
        sb.AppendLine();
        sb.AppendLine("Ratio > 1: DotQuant is faster. Pre-tokenizer split alone (Llama 3's pattern; before = .NET `Regex` over UTF-16 code units, as DotQuant split until now; after = `CodePointRegex`, compiled, with the surrogate stand-ins only when the text has surrogates):");
        sb.AppendLine();
        sb.AppendLine("| text | pieces | before: Regex ms | after: CodePointRegex ms | after / before |");
        sb.AppendLine("|---|---|---|---|---|");
        foreach (var (label, text) in new[] { ("wiki", wiki), ("wiki + astral", astral) })
        {
            var before = new Regex(Llama3Pattern, RegexOptions.CultureInvariant);
            int pieces = 0;
            double b = Best(() => { var sw = Stopwatch.StartNew(); int n = 0; for (var m = before.Match(text); m.Success; m = m.NextMatch()) n++; return sw.Elapsed.TotalSeconds; });
            var after = new CodePointRegex(Llama3Pattern);
            double a = Best(() => { var sw = Stopwatch.StartNew(); pieces = after.Matches(text).Count; return sw.Elapsed.TotalSeconds; });
            sb.AppendLine($"| {label} | {pieces:N0} | {b * 1000:F0} | {a * 1000:F0} | {a / b:F2} |");
        }
        return sb.ToString();
    }

    static IEnumerable<(string, string)> Folders(string shared)
    {
        foreach (var n in new[] { "gpt2", "llama3", "qwen2.5", "qwen3", "mistral-v0.1" })
            yield return (n, Path.Combine(shared, "tokenizers", n));
        yield return ("stories260K", Path.Combine(shared, "models", "stories260K"));
    }

    static double Best(Func<double> run) => Enumerable.Range(0, 3).Select(_ => run()).Min();

    /// <summary>Every 7th word's ASCII letters and digits as mathematical bold (U+1D400 / U+1D7CE).</summary>
    static string WithAstralWords(string text)
    {
        var sb = new StringBuilder(text.Length * 2);
        int word = 0;
        bool inWord = false;
        foreach (char c in text)
        {
            bool letter = c is >= 'a' and <= 'z' or >= 'A' and <= 'Z' or >= '0' and <= '9';
            if (letter && !inWord) word++;
            inWord = letter;
            if (letter && word % 7 == 0)
                sb.Append(char.ConvertFromUtf32(c switch
                {
                    >= 'A' and <= 'Z' => 0x1D400 + (c - 'A'),
                    >= 'a' and <= 'z' => 0x1D41A + (c - 'a'),
                    _ => 0x1D7CE + (c - '0'),
                }));
            else sb.Append(c);
        }
        return sb.ToString();
    }
}
