using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace DotQuant.Tool;

/// <summary>--format text|json. With json, the command's last stdout line is one JSON object.</summary>
public static class OutputFormat
{
    public static Option<string> Create() => new Option<string>("--format")
    {
        Description = "text (default) or json (last line of stdout is one JSON object)",
        DefaultValueFactory = _ => "text",
    }.AcceptOnlyFromAmong("text", "json");

    static readonly JsonSerializerOptions Compact = new() { WriteIndented = false };

    public static void WriteJson(TextWriter stdout, JsonObject obj) => stdout.WriteLine(obj.ToJsonString(Compact));
}
