using System.Text;

namespace DotQuant.Tokenizer.Tests;

/// <summary>Shrinks an input on which two tokenizers differ to a smallest one that still differs
/// (removing ever smaller runs of code points), and spells it so a reader sees every code point.</summary>
public static class Minimizer
{
    public static string Shrink(string input, Func<string, bool> differs)
    {
        var cps = CodePoints(input);
        for (int chunk = Math.Max(1, cps.Count / 2); chunk >= 1; chunk /= 2)
            for (int i = 0; i + chunk <= cps.Count;)
            {
                var candidate = cps.Take(i).Concat(cps.Skip(i + chunk)).ToList();
                if (candidate.Count > 0 && differs(Join(candidate))) cps = candidate;
                else i++;
            }
        return Join(cps);
    }

    public static string Describe(string s)
    {
        var sb = new StringBuilder("\"");
        foreach (int cp in CodePoints(s))
            sb.Append(cp is >= 0x20 and < 0x7F && cp != '"' && cp != '\\' ? ((char)cp).ToString() : $"\\u{{{cp:X4}}}");
        return sb.Append('"').ToString();
    }

    static List<int> CodePoints(string s)
    {
        var list = new List<int>(s.Length);
        for (int i = 0; i < s.Length; i += char.IsSurrogatePair(s, i) ? 2 : 1)
            list.Add(char.ConvertToUtf32(s, i));
        return list;
    }

    static string Join(List<int> cps) => string.Concat(cps.Select(char.ConvertFromUtf32));
}
