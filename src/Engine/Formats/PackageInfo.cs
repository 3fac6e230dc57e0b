using System.Text.Json.Nodes;
using DotQuant.Engine.Calibration;
using DotQuant.Engine.Evaluation;

namespace DotQuant.Engine.Formats;

public sealed record CalibrationInfo(string Data, int Samples, int SequenceLength, long Seed);

/// <summary>Perplexity (and zero-shot tasks) measured before and after quantization. The package
/// keeps the measurements, never a verdict: the quality gate is judged on every run from these
/// figures with the gate the manifest has then.</summary>
public sealed record EvaluationInfo(string Data, int Windows, int? SequenceLength, double Before, double After)
{
    public IReadOnlyList<(TaskResult Before, TaskResult After)> Tasks { get; init; } = [];
}

/// <summary>What a package says about how it was made (dotquant.json, or a GPTQ checkpoint's
/// quantization_config.meta): one typed record, one JSON layout.</summary>
public sealed record PackageInfo
{
    public required string ModelType { get; init; }
    public required string SourceModel { get; init; }
    public required JsonObject Scheme { get; init; }
    public required string InputFingerprint { get; init; }
    public required IReadOnlyList<LayerReport> Layers { get; init; }
    public IReadOnlyDictionary<string, string> SkipReasons { get; init; } = new Dictionary<string, string>();
    public CalibrationInfo? Calibration { get; init; }
    public EvaluationInfo? Evaluation { get; init; }

    public JsonObject ToJson()
    {
        var layers = new JsonArray();
        foreach (var r in Layers)
        {
            var l = new JsonObject { ["name"] = r.Name, ["quantized"] = r.Quantized, ["in_features"] = r.InFeatures, ["out_features"] = r.OutFeatures };
            if (r.Quantized)
            {
                l["bits"] = r.Bits;
                l["group_size"] = r.GroupSize;
                if (double.IsFinite(r.Loss)) l["loss"] = r.Loss;
                if (double.IsFinite(r.RtnLoss)) l["rtn_loss"] = r.RtnLoss;
                if (r.Damp > 0) l["damp"] = r.Damp;
                l["kind"] = r.Kind;
                l["paper_bits"] = Math.Round(r.PaperBits, 6);
                l["stored_bits"] = Math.Round(r.StoredBits, 6);
                foreach (var (k, v) in r.Details ?? []) l[k] = v?.DeepClone();
            }
            else if (SkipReasons.TryGetValue(r.Name, out var why)) l["reason"] = why;
            layers.Add(l);
        }
        var info = new JsonObject
        {
            ["format"] = "dotquant",
            ["format_version"] = QuantizedPackage.FormatVersion,
            ["engine_version"] = QuantizeJob.EngineVersion,
            ["model_type"] = ModelType,
            ["source_model"] = SourceModel,
            ["scheme"] = Scheme.DeepClone(),
            ["input_fingerprint"] = InputFingerprint,
            ["layers"] = layers,
        };
        var bits = ModelBits.Of(Layers);
        if (bits.Weights > 0)
            info["bits"] = new JsonObject
            {
                ["paper"] = Math.Round(bits.Paper, 6),
                ["stored"] = Math.Round(bits.Stored, 6),
                ["quantized_weights"] = bits.Weights,
            };
        if (Calibration is { } c)
            info["calibration"] = new JsonObject { ["data"] = c.Data, ["samples"] = c.Samples, ["sequence_length"] = c.SequenceLength, ["seed"] = c.Seed };
        if (Evaluation is { } e)
        {
            var evaluation = new JsonObject
            {
                ["perplexity"] = new JsonObject
                {
                    ["data"] = e.Data, ["windows"] = e.Windows, ["sequence_length"] = e.SequenceLength, ["before"] = e.Before, ["after"] = e.After,
                },
            };
            if (e.Tasks.Count > 0)
                evaluation["tasks"] = new JsonArray(e.Tasks.Select(p => (JsonNode?)new JsonObject
                {
                    ["task"] = p.Before.Task,
                    ["documents"] = p.Before.Documents,
                    ["acc_before"] = p.Before.Acc,
                    ["acc_after"] = p.After.Acc,
                    ["acc_norm_before"] = p.Before.AccNorm,
                    ["acc_norm_after"] = p.After.AccNorm,
                }).ToArray());
            info["evaluation"] = evaluation;
        }
        return info;
    }

    /// <summary>The before/after perplexities a finished package recorded (dotquant.json or a GPTQ
    /// checkpoint's quantization_config.meta), or null when it was not evaluated.</summary>
    public static (double Before, double After)? RecordedPerplexity(string folder)
    {
        JsonNode? info = null;
        string native = Path.Combine(folder, QuantizedPackage.ManifestFile);
        string config = Path.Combine(folder, "config.json");
        if (File.Exists(native)) info = JsonNode.Parse(File.ReadAllText(native));
        else if (File.Exists(config)) info = JsonNode.Parse(File.ReadAllText(config))?["quantization_config"]?["meta"];
        var p = info?["evaluation"]?["perplexity"];
        return (double?)p?["before"] is double before && (double?)p?["after"] is double after ? (before, after) : null;
    }
}
