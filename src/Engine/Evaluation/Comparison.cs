using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;

namespace DotQuant.Engine.Evaluation;

/// <summary>Rows of metrics × columns of models, with deltas against the first model.</summary>
public sealed class Comparison
{
    public sealed record Row(string Metric, double?[] Values, double?[] Stderr, bool HigherIsBetter);

    public required IReadOnlyList<string> Models { get; init; }
    public required IReadOnlyList<Row> Rows { get; init; }

    public static Comparison Build(IReadOnlyList<string> models, IReadOnlyList<EvalSummary> summaries, string? dataName)
    {
        var rows = new List<Row>();
        if (summaries.Any(s => s.Perplexity is not null))
            rows.Add(new Row($"perplexity ({dataName ?? "text"})", summaries.Select(s => s.Perplexity?.Perplexity).ToArray(), new double?[summaries.Count], false));
        var taskNames = summaries.SelectMany(s => s.Tasks.Select(t => t.Task)).Distinct().ToList();
        foreach (var name in taskNames)
        {
            TaskResult?[] results = summaries.Select(s => s.Tasks.FirstOrDefault(t => t.Task == name)).ToArray();
            rows.Add(new Row($"{name} acc", results.Select(r => r?.Acc).ToArray(), results.Select(r => r?.AccStderr).ToArray(), true));
            if (results.Any(r => r?.AccNorm is not null))
                rows.Add(new Row($"{name} acc_norm", results.Select(r => r?.AccNorm).ToArray(), results.Select(r => r?.AccNormStderr).ToArray(), true));
            if (results.Any(r => r?.Perplexity is not null))
                rows.Add(new Row($"{name} perplexity", results.Select(r => r?.Perplexity).ToArray(), new double?[results.Length], false));
        }
        return new Comparison { Models = models, Rows = rows };
    }

    static string F(double? v, bool accuracy) => v is double x ? x.ToString(accuracy ? "F4" : "F2", CultureInfo.InvariantCulture) : "–";

    public string ToMarkdown()
    {
        var sb = new StringBuilder();
        sb.AppendLine("| metric | " + string.Join(" | ", Models.Select((m, i) => i == 0 ? Name(m) : $"{Name(m)} (Δ)")) + " |");
        sb.AppendLine("|---|" + string.Concat(Models.Select(_ => "---|")));
        foreach (var r in Rows)
        {
            bool acc = r.HigherIsBetter;
            var cells = r.Values.Select((v, i) =>
            {
                string cell = F(v, acc) + (r.Stderr[i] is double se && double.IsFinite(se) ? $" ± {F(se, true)}" : "");
                if (i > 0 && v is double x && r.Values[0] is double b)
                    cell += " (" + (x - b).ToString(acc ? "+0.0000;-0.0000" : "+0.00;-0.00", CultureInfo.InvariantCulture) + ")";
                return cell;
            });
            sb.AppendLine($"| {r.Metric} | {string.Join(" | ", cells)} |");
        }
        return sb.ToString();
    }

    public JsonObject ToJson()
    {
        var rows = new JsonArray();
        foreach (var r in Rows)
            rows.Add(new JsonObject
            {
                ["metric"] = r.Metric,
                ["values"] = new JsonArray(r.Values.Select(v => (JsonNode?)(v is double x ? JsonValue.Create(x) : null)).ToArray()),
                ["stderr"] = new JsonArray(r.Stderr.Select(v => (JsonNode?)(v is double x && double.IsFinite(x) ? JsonValue.Create(x) : null)).ToArray()),
                ["delta"] = new JsonArray(r.Values.Select(v => (JsonNode?)(v is double x && r.Values[0] is double b ? JsonValue.Create(x - b) : null)).ToArray()),
                ["higher_is_better"] = r.HigherIsBetter,
            });
        return new JsonObject { ["models"] = new JsonArray(Models.Select(m => (JsonNode?)JsonValue.Create(m)).ToArray()), ["rows"] = rows };
    }

    static string Name(string dir) => Path.GetFileName(dir.TrimEnd('/', '\\'));
}
