using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using DotQuant.Engine.Diagnostics;
using DotQuant.Engine.Evaluation;
using DotQuant.Engine.Formats;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.IO;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Quantizers;
using DotQuant.Engine.Rotation;
using DotQuant.Engine.Tokenization;

namespace DotQuant.Engine.Calibration;

/// <summary>A progress event of a run (the CLI prints it as a line or a JSON object).</summary>
public sealed record JobEvent(string Kind, string Message, LayerReport? Layer = null, int Done = 0, int Total = 0, double? Perplexity = null);

public sealed record JobResult(string Output, double Seconds, PerplexityResult? Before, PerplexityResult? After, bool GatePassed, IReadOnlyList<LayerReport> Layers)
{
    public IReadOnlyList<TaskResult> TasksBefore { get; init; } = [];
    public IReadOnlyList<TaskResult> TasksAfter { get; init; } = [];
}

/// <summary><c>dotnet quantize run</c>: manifest → model → calibration → sequential solve → output
/// folder (+ optional before/after perplexity and gate).</summary>
public static class QuantizeJob
{
    public static string EngineVersion => typeof(QuantizeJob).Assembly.GetName().Version?.ToString(3) ?? "0.0.0";

    /// <param name="contentAddressed">The output folder is a cache entry keyed by the fingerprint:
    /// if another process completes it first, its (identical) folder is kept.</param>
    public static JobResult Run(QuantManifest m, string outputDir, Action<JobEvent>? onEvent = null, CancellationToken ct = default, bool contentAddressed = false)
    {
        var total = Stopwatch.StartNew();
        void Emit(JobEvent e) => onEvent?.Invoke(e);
        var q = m.Quantize;
        var config = ModelConfig.Load(m.ModelPath);
        if (config.Gptq is not null || File.Exists(Path.Combine(m.ModelPath, QuantizedPackage.ManifestFile)))
            throw new DotQuantException(ErrorCodes.UnsupportedModelType, "the model is already quantized; quantize the original floating-point checkpoint", m.ModelPath);
        var tokenizer = HfTokenizer.Load(m.ModelPath);

        using var source = Checkpoint.Open(m.ModelPath);
        // QuaRot: the float model is rotated first (its function unchanged) and everything after —
        // evaluation, calibration, the package's float tensors — works on the rotated weights.
        RotatedWeights? rotated = null;
        if (q.Rotation is { } rotation)
        {
            var sw = Stopwatch.StartNew();
            rotated = QuaRot.Apply(config, source, rotation);
            Emit(new JobEvent("rotate", $"Hadamard rotation: residual {rotated.Residual}, heads H{config.HeadDim}, down_proj {(rotated.DownProj?.ToString() ?? "none")} ({sw.Elapsed.TotalSeconds:F1} s)"));
        }
        using var rotatedScope = rotated;
        IWeightSource weights = rotated is null ? source : rotated;
        using var model = ModelLoader.Load(rotated?.Config ?? config, weights);

        PerplexityResult? before = null, after = null;
        int[]? evalIds = null;
        int evalLength = 0;
        if (m.Evaluate?.Perplexity is { } ppl)
        {
            if (!File.Exists(ppl.Data)) throw new DotQuantException(ErrorCodes.EvalData, $"evaluation data not found: {ppl.Data}", m.Path);
            evalIds = tokenizer.Encode(File.ReadAllText(ppl.Data));
            evalLength = ppl.SequenceLength ?? Math.Min(2048, config.MaxPositionEmbeddings);
            Emit(new JobEvent("evaluate", "perplexity before quantization"));
            before = Perplexity.Windows(model, evalIds, evalLength, ppl.MaxSequences);
            Emit(new JobEvent("perplexity", $"before: {before.Perplexity:F4}", Perplexity: before.Perplexity));
        }

        IReadOnlyList<ZeroShotTask> tasks = m.Evaluate?.Tasks is { } ts ? ts.Files.Select(f => ZeroShotTask.Load(f, null, ts.Limit)).ToList() : [];
        List<TaskResult> ScoreTasks(string when) => tasks.Select(t =>
        {
            Emit(new JobEvent("evaluate", $"{t.Name} {when} quantization"));
            var r = ZeroShot.Evaluate(model, tokenizer, t);
            Emit(new JobEvent("task", $"{t.Name} {when}: acc {r.Acc:F4}"));
            return r;
        }).ToList();
        var tasksBefore = ScoreTasks("before");

        IReadOnlyList<long[]> sequences = [];
        if (q.Method != QuantMethod.Rtn)
        {
            var cal = m.Calibration!;
            var set = CalibrationSet.Load(cal.Data, tokenizer, config.VocabSize, cal.Samples, cal.SequenceLength, cal.Seed);
            sequences = set.Sequences;
            Emit(new JobEvent("calibration", $"{sequences.Count} sequences × {sequences[0].Length} tokens from {Path.GetFileName(cal.Data)} ({set.AvailableTokens:N0} tokens available)"));
        }

        bool gptq = m.Output.Format == OutputFormat.Gptq;
        var skipReasons = new Dictionary<string, string>();
        SolverOptions? Plan(NamedLinear lin)
        {
            var o = q.PlanFor(lin.Name);
            if (o is null) { skipReasons[lin.Name] = "skipped by a layers rule"; return null; }
            if (gptq && (lin.InFeatures % 32 != 0 || lin.OutFeatures % 32 != 0 || (o.GroupSize > 0 && lin.InFeatures % o.GroupSize != 0)))
            {
                string why = $"[{lin.OutFeatures}, {lin.InFeatures}] cannot be packed as GPTQ (dimensions must be multiples of 32 and of the group size)";
                skipReasons[lin.Name] = why;
                Emit(new JobEvent("warning", $"{lin.Name}: {why}; kept in full precision"));
                return null;
            }
            return o;
        }

        var reports = new List<LayerReport>();
        var plan = new CalibrationPlan
        {
            OptionsFor = Plan,
            RoundToNearest = q.Method == QuantMethod.Rtn,
            FloatStream = q.NeedsFloatStream,
            OutputAdaptive = q.Oac,
            OnLayer = (r, done, count) =>
            {
                reports.Add(r);
                if (r.Quantized) Emit(new JobEvent("layer", r.Name, r, done, count));
            },
            OnWarning = w => Emit(new JobEvent("warning", w)),
        };
        var quantized = SequentialCalibrator.Run(model, sequences, plan, ct);
        try
        {
            if (evalIds is not null)
            {
                Emit(new JobEvent("evaluate", "perplexity after quantization"));
                after = Perplexity.Windows(model, evalIds, evalLength, m.Evaluate!.Perplexity!.MaxSequences);
                Emit(new JobEvent("perplexity", $"after: {after.Perplexity:F4}", Perplexity: after.Perplexity));
            }
            var tasksAfter = ScoreTasks("after");
            bool gatePassed = true;
            if (m.Evaluate?.Gate is { } gate && before is not null && after is not null)
            {
                double allowed = gate.Relative ? before.Perplexity * (1 + gate.MaxIncrease) : before.Perplexity + gate.MaxIncrease;
                gatePassed = after.Perplexity <= allowed;
            }

            var info = Describe(m, config, reports, skipReasons, sequences, before, after, quantized);
            if (tasksAfter.Count > 0)
            {
                var taskInfo = info["evaluation"] as JsonObject ?? new JsonObject();
                info["evaluation"] = taskInfo;
                taskInfo["tasks"] = new JsonArray(tasksBefore.Zip(tasksAfter).Select(p => (JsonNode?)new JsonObject
                {
                    ["task"] = p.First.Task,
                    ["documents"] = p.First.Documents,
                    ["acc_before"] = p.First.Acc,
                    ["acc_after"] = p.Second.Acc,
                    ["acc_norm_before"] = p.First.AccNorm,
                    ["acc_norm_after"] = p.Second.AccNorm,
                }).ToArray());
            }
            if (info["evaluation"] is JsonObject evaluation && m.Evaluate?.Gate is not null)
                evaluation["gate"] = gatePassed ? "passed" : "failed";
            string destination = Path.Combine(outputDir, m.Output.Name);
            ct.ThrowIfCancellationRequested();
            var names = rotated?.Names ?? source.Tensors.Select(t => t.Name).ToList();
            Action<JsonObject>? patch = rotated is null ? null : c =>
            {
                c["tie_word_embeddings"] = false;
                c["dotquant_rotation"] = new JsonObject
                {
                    ["down_proj_input"] = rotated.DownProj is null ? "none" : "hadamard",
                    ["residual"] = rotated.Residual.ToString(),
                    ["seed"] = q.Rotation!.Seed,
                };
            };
            QuantizedPackage.Write(destination, gptq, m.ModelPath, weights, names, quantized, info,
                new QuantizeSettings(q.Bits, q.GroupSize, q.Symmetric, q.ActOrder, q.StaticGroups, q.Damp), contentAddressed, patch);
            Emit(new JobEvent("output", destination));
            return new JobResult(destination, total.Elapsed.TotalSeconds, before, after, gatePassed, reports) { TasksBefore = tasksBefore, TasksAfter = tasksAfter };
        }
        finally
        {
            foreach (var x in quantized.Values) x.Dispose();
        }
    }

    static JsonObject Describe(QuantManifest m, ModelConfig config, List<LayerReport> reports, Dictionary<string, string> skipReasons,
        IReadOnlyList<long[]> sequences, PerplexityResult? before, PerplexityResult? after, IReadOnlyDictionary<string, SolvedLinear> quantized)
    {
        var scheme = Scheme(m.Quantize);
        var layers = new JsonArray();
        foreach (var r in reports)
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
                if (quantized.TryGetValue(r.Name, out var solved))
                    foreach (var (k, v) in solved.Describe()) l[k] = v?.DeepClone();
            }
            else if (skipReasons.TryGetValue(r.Name, out var why)) l["reason"] = why;
            layers.Add(l);
        }
        var info = new JsonObject
        {
            ["format"] = "dotquant",
            ["format_version"] = QuantizedPackage.FormatVersion,
            ["engine_version"] = EngineVersion,
            ["model_type"] = config.ModelType,
            ["source_model"] = Path.GetFileName(m.ModelPath.TrimEnd('/', '\\')),
            ["scheme"] = scheme,
            ["input_fingerprint"] = Fingerprint(m),
            ["layers"] = layers,
        };
        var bits = ModelBits.Of(reports);
        if (bits.Weights > 0)
            info["bits"] = new JsonObject
            {
                ["paper"] = Math.Round(bits.Paper, 6),
                ["stored"] = Math.Round(bits.Stored, 6),
                ["quantized_weights"] = bits.Weights,
            };
        if (m.Calibration is { } c && sequences.Count > 0)
            info["calibration"] = new JsonObject
            {
                ["data"] = Path.GetFileName(c.Data),
                ["samples"] = sequences.Count,
                ["sequence_length"] = sequences[0].Length,
                ["seed"] = c.Seed,
            };
        if (before is not null && after is not null)
            info["evaluation"] = new JsonObject
            {
                ["perplexity"] = new JsonObject
                {
                    ["data"] = Path.GetFileName(m.Evaluate!.Perplexity!.Data),
                    ["windows"] = after.Windows,
                    ["sequence_length"] = m.Evaluate.Perplexity.SequenceLength,
                    ["before"] = before.Perplexity,
                    ["after"] = after.Perplexity,
                },
            };
        return info;
    }

    /// <summary>Whether a finished output folder recorded a failed quality gate (a cached result
    /// must fail the build again, not pass silently). Returns the before/after figures too.</summary>
    public static (bool Failed, double Before, double After) RecordedGate(string folder)
    {
        JsonNode? info = null;
        string native = Path.Combine(folder, QuantizedPackage.ManifestFile);
        string config = Path.Combine(folder, "config.json");
        if (File.Exists(native)) info = JsonNode.Parse(File.ReadAllText(native));
        else if (File.Exists(config)) info = JsonNode.Parse(File.ReadAllText(config))?["quantization_config"]?["meta"];
        var evaluation = info?["evaluation"];
        bool failed = (string?)evaluation?["gate"] == "failed";
        return (failed, (double?)evaluation?["perplexity"]?["before"] ?? double.NaN, (double?)evaluation?["perplexity"]?["after"] ?? double.NaN);
    }

    /// <summary>The scheme part of dotquant.json (also hashed into the fingerprint).</summary>
    public static JsonObject Scheme(QuantizeSpec q)
    {
        var scheme = new JsonObject
        {
            ["method"] = q.Method.ToString().ToLowerInvariant(),
            ["bits"] = q.Bits,
            ["group_size"] = q.GroupSize,
            ["symmetric"] = q.Symmetric,
            ["grid"] = q.Grid.ToString().ToLowerInvariant(),
            ["mse_clip"] = q.MseClip,
        };
        if (q.Method != QuantMethod.Rtn)
        {
            scheme["act_order"] = q.ActOrder;
            scheme["static_groups"] = q.StaticGroups;
            scheme["damp"] = q.Damp;
            scheme["block_size"] = q.BlockSize;
            scheme["compensation_aware"] = q.CompensationAware;
            if (q.Method == QuantMethod.Gptaq) scheme["alpha"] = q.Alpha;
            if (q.CompensationAware) { scheme["alpha2"] = q.Alpha2; scheme["rescomp_mode"] = q.ResCompMode.ToString().ToLowerInvariant(); }
        }
        if (q.Method == QuantMethod.SpQR)
            scheme["spqr"] = new JsonObject
            {
                ["relative_threshold"] = double.IsFinite(q.Spqr.OutlierThreshold) ? q.Spqr.OutlierThreshold : null,
                ["scale_bits"] = q.Spqr.ScaleBits,
                ["zero_bits"] = q.Spqr.ZeroBits,
                ["stat_group_size"] = q.Spqr.StatGroupSize,
            };
        if (q.Method == QuantMethod.BiLLM)
            scheme["billm"] = new JsonObject
            {
                ["metric"] = q.Billm.Metric.ToString().ToLowerInvariant(),
                ["search_on"] = q.Billm.SearchOnSalience ? "salience" : "weights",
                ["max_salient"] = q.Billm.MaxSalient,
            };
        scheme["hessian"] = q.Oac is null ? "layer" : "output_adaptive";
        if (q.Oac is { } oac)
            scheme["output_adaptive"] = new JsonObject
            {
                ["fisher"] = oac.Fisher switch { FisherSample.SequenceExplicit => "sequence_explicit", var x => x.ToString().ToLowerInvariant() },
                ["labels"] = oac.Labels.ToString().ToLowerInvariant(),
                ["schedule"] = oac.Schedule switch { OacSchedule.SequentialGroups => "sequential_groups", var x => x.ToString().ToLowerInvariant() },
                ["seed"] = oac.Seed,
            };
        if (q.Rotation is { } rot)
            scheme["rotation"] = new JsonObject
            {
                ["kind"] = "hadamard",
                ["seed"] = rot.Seed,
                ["heads"] = rot.Heads,
                ["down_proj"] = rot.DownProj,
                ["subtract_embedding_mean"] = rot.SubtractEmbeddingMean,
            };
        return scheme;
    }

    /// <summary>The files a run reads: model folder (*.json, *.safetensors), calibration data and
    /// evaluation data. The build integration watches exactly these.</summary>
    public static IReadOnlyList<string> InputFiles(QuantManifest m)
    {
        var files = Directory.EnumerateFiles(m.ModelPath)
            .Where(f => f.EndsWith(".safetensors", StringComparison.Ordinal) || f.EndsWith(".json", StringComparison.Ordinal))
            .Order(StringComparer.Ordinal).ToList();
        if (m.Calibration is { } c) files.Add(c.Data);
        if (m.Evaluate?.Perplexity is { } p) files.Add(p.Data);
        if (m.Evaluate?.Tasks is { } t) files.AddRange(t.Files);
        return files;
    }

    /// <summary>SHA-256 over everything that determines the output: engine version, scheme, layer
    /// rules, output settings, evaluation settings and the content of every input file.</summary>
    public static string Fingerprint(QuantManifest m, FileDigests? digests = null)
    {
        digests ??= new FileDigests(null);
        var scheme = Scheme(m.Quantize);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        void AddText(string s) { var b = Encoding.UTF8.GetBytes(s); hash.AppendData(BitConverter.GetBytes(b.Length)); hash.AppendData(b); }
        void AddFile(string path)
        {
            AddText(Path.GetFileName(path));
            AddText(digests.Of(path));
        }
        AddText(EngineVersion);
        AddText(scheme.ToJsonString());
        foreach (var r in m.Quantize.Layers) AddText($"{r.Match}|{r.Bits}|{r.GroupSize}|{r.Skip}");
        AddText($"{m.Output.Name}|{m.Output.Format}");
        if (m.Calibration is { } c) AddText($"{c.Samples}|{c.SequenceLength}|{c.Seed}");
        if (m.Evaluate?.Perplexity is { } p) AddText($"{p.SequenceLength}|{p.MaxSequences}");
        if (m.Evaluate?.Tasks is { } t) AddText($"tasks|{t.Limit}|{t.Files.Count}");
        foreach (var f in InputFiles(m)) AddFile(f);
        return "sha256:" + Convert.ToHexStringLower(hash.GetHashAndReset());
    }
}
