using DotQuant.Runtime;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using DotQuant.Engine.Calibration;
using DotQuant.Engine.Evaluation;
using DotQuant.Engine.Formats;
using DotQuant.Engine.Manifest;

namespace DotQuant.Tool.Reports;

/// <summary>What a run with an <c>evaluate:</c> section leaves next to its output, in
/// <c>&lt;output&gt;-report/</c>: report.md (for people), report.json (for tools) and layer-loss.png.</summary>
public static class RunReport
{
    public static string FolderFor(string output) => output.TrimEnd('/', '\\') + "-report";

    public static string Write(QuantManifest m, JobResult r, long peakRssBytes)
    {
        string folder = FolderFor(r.Output);
        var json = Json(m, r, peakRssBytes);
        AtomicDirectory.Write(folder, tmp =>
        {
            File.WriteAllText(Path.Combine(tmp, "report.json"), json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            File.WriteAllText(Path.Combine(tmp, "report.md"), Markdown(m, r, peakRssBytes));
            LossChart.Save(Path.Combine(tmp, "layer-loss.png"), r.Layers, m.Output.Name);
        });
        return folder;
    }

    static JsonObject Json(QuantManifest m, JobResult r, long peak)
    {
        var bits = ModelBits.Of(r.Layers);
        var o = new JsonObject
        {
            ["output"] = r.Output,
            ["manifest"] = m.Path,
            ["scheme"] = QuantizeJob.Scheme(m.Quantize),
            ["seconds"] = Math.Round(r.Seconds, 3),
            ["peak_rss_bytes"] = peak,
            ["phases"] = new JsonObject(r.Phases.Select(p => KeyValuePair.Create<string, JsonNode?>(p.Key, Math.Round(p.Value, 3)))),
            ["bits"] = bits.Weights == 0 ? null : new JsonObject { ["paper"] = bits.Paper, ["stored"] = bits.Stored },
            ["perplexity"] = r.Before is null ? null : new JsonObject
            {
                ["data"] = Path.GetFileName(m.Evaluate!.Perplexity!.Data),
                ["before"] = r.Before.Perplexity,
                ["after"] = r.After!.Perplexity,
                ["windows"] = r.After.Windows,
            },
            ["gate"] = m.Evaluate?.Gate is null ? null : r.GatePassed ? "passed" : "failed",
            ["tasks"] = new JsonArray(r.TasksBefore.Zip(r.TasksAfter).Select(p => (JsonNode?)new JsonObject
            {
                ["task"] = p.First.Task,
                ["documents"] = p.First.Documents,
                ["acc"] = new JsonObject { ["before"] = p.First.Acc, ["after"] = p.Second.Acc, ["stderr_before"] = p.First.AccStderr, ["stderr_after"] = p.Second.AccStderr },
                ["acc_norm"] = p.First.AccNorm is null ? null : new JsonObject { ["before"] = p.First.AccNorm, ["after"] = p.Second.AccNorm, ["stderr_before"] = p.First.AccNormStderr, ["stderr_after"] = p.Second.AccNormStderr },
            }).ToArray()),
            ["layers"] = new JsonArray(r.Layers.Select(l => (JsonNode?)new JsonObject
            {
                ["name"] = l.Name,
                ["quantized"] = l.Quantized,
                ["kind"] = l.Quantized ? l.Kind : null,
                ["loss"] = double.IsFinite(l.Loss) ? l.Loss : null,
                ["rtn_loss"] = double.IsFinite(l.RtnLoss) ? l.RtnLoss : null,
                ["paper_bits"] = double.IsFinite(l.PaperBits) ? l.PaperBits : null,
                ["stored_bits"] = double.IsFinite(l.StoredBits) ? l.StoredBits : null,
                ["seconds"] = Math.Round(l.Seconds, 4),
            }).ToArray()),
        };
        return o;
    }

    static string Markdown(QuantManifest m, JobResult r, long peak)
    {
        var c = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        var q = r.Layers.Where(l => l.Quantized).ToList();
        var bits = ModelBits.Of(r.Layers);
        sb.AppendLine($"# Quantization report: {m.Output.Name}");
        sb.AppendLine();
        sb.AppendLine($"- manifest: `{m.Path}`");
        sb.AppendLine($"- scheme: `{QuantizeJob.Scheme(m.Quantize).ToJsonString()}`");
        sb.AppendLine(string.Create(c, $"- {q.Count} linears quantized in {r.Seconds:F1} s, peak RSS {peak / 1e6:F0} MB"));
        if (bits.Weights > 0)
            sb.AppendLine(string.Create(c, $"- bits per weight: {bits.Paper:F3} as the method counts, {bits.Stored:F3} stored"));
        if (r.Phases.Count > 0)
            sb.AppendLine("- where the time went: " + string.Join(", ", r.Phases.OrderByDescending(p => p.Value)
                .Select(p => string.Create(c, $"{p.Key} {p.Value:F1} s ({p.Value / Math.Max(r.Seconds, 1e-9):P0})"))));
        sb.AppendLine();
        if (r.Before is not null || r.TasksAfter.Count > 0)
        {
            sb.AppendLine("## What quantization cost");
            sb.AppendLine();
            sb.AppendLine("| metric | before | after | Δ |");
            sb.AppendLine("|---|---|---|---|");
            if (r.Before is not null)
                sb.AppendLine(string.Create(c, $"| perplexity ({Path.GetFileName(m.Evaluate!.Perplexity!.Data)}, {r.After!.Windows} windows) | {r.Before.Perplexity:F3} | {r.After.Perplexity:F3} | {r.After.Perplexity - r.Before.Perplexity:+0.000;-0.000} |"));
            foreach (var (b, a) in r.TasksBefore.Zip(r.TasksAfter))
            {
                sb.AppendLine(string.Create(c, $"| {b.Task} acc ({b.Documents} docs) | {b.Acc:F4} ± {b.AccStderr:F4} | {a.Acc:F4} ± {a.AccStderr:F4} | {a.Acc - b.Acc:+0.0000;-0.0000} |"));
                if (b.AccNorm is double bn && a.AccNorm is double an)
                    sb.AppendLine(string.Create(c, $"| {b.Task} acc_norm | {bn:F4} ± {b.AccNormStderr:F4} | {an:F4} ± {a.AccNormStderr:F4} | {an - bn:+0.0000;-0.0000} |"));
            }
            if (m.Evaluate?.Gate is not null) sb.AppendLine($"\nQuality gate: **{(r.GatePassed ? "passed" : "failed")}**.");
            sb.AppendLine();
        }
        sb.AppendLine("## Per layer");
        sb.AppendLine();
        sb.AppendLine("![per-layer calibration loss](layer-loss.png)");
        sb.AppendLine();
        sb.AppendLine("| layer | kind | loss tr(ΔW H ΔWᵀ) | RTN loss | bits (paper / stored) | s |");
        sb.AppendLine("|---|---|---|---|---|---|");
        foreach (var l in r.Layers)
            sb.AppendLine(l.Quantized
                ? string.Create(c, $"| {l.Name} | {l.Kind} | {Sci(l.Loss)} | {Sci(l.RtnLoss)} | {l.PaperBits:F3} / {l.StoredBits:F3} | {l.Seconds:F2} |")
                : $"| {l.Name} | full precision | | | | |");
        return sb.ToString();
    }

    static string Sci(double v) => double.IsFinite(v) ? v.ToString("0.000e+0", CultureInfo.InvariantCulture) : "–";
}
