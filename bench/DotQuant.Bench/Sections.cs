namespace DotQuant.Bench;

/// <summary>Marked sections of a report, so one section can be rerun alone.</summary>
static class Sections
{
    /// <summary>Replaces the text between &lt;!-- name:begin --&gt; and &lt;!-- name:end --&gt; in a report
    /// (appending the marked block when it is not there yet), so one section can be rerun alone.</summary>
    public static void Splice(string file, string name, string content)
    {
        string begin = $"<!-- {name}:begin -->", end = $"<!-- {name}:end -->";
        string block = $"{begin}\n{content.TrimEnd()}\n{end}\n";
        string text = File.Exists(file) ? File.ReadAllText(file) : "";
        int i = text.IndexOf(begin, StringComparison.Ordinal), j = text.IndexOf(end, StringComparison.Ordinal);
        text = i >= 0 && j > i
            ? text[..i] + block + text[(j + end.Length)..].TrimStart('\n')
            : text.TrimEnd() + "\n\n" + block;
        File.WriteAllText(file, text);
    }

    /// <summary>The content of a marked section, or null when the report has none.</summary>
    public static string? Extract(string file, string name)
    {
        if (!File.Exists(file)) return null;
        string text = File.ReadAllText(file), begin = $"<!-- {name}:begin -->\n", end = $"<!-- {name}:end -->";
        int i = text.IndexOf(begin, StringComparison.Ordinal), j = text.IndexOf(end, StringComparison.Ordinal);
        return i >= 0 && j > i ? text[(i + begin.Length)..j] : null;
    }
}
