using System.Text.Json.Nodes;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.Quantizers;
using DotQuant.Engine.Rotation;

namespace DotQuant.Engine.Manifest;

public enum OutputFormat { DotQuant, Gptq, Gguf, Onnx }

/// <summary>output.onnx.head: how an ONNX output stores the head (no calibrator solves it): round-to-nearest
/// in MatMulNBits blocks of 32 at 8 or 4 bits, or fp32 (a Gemm over the stored rows).</summary>
public enum OnnxHead { Int8, Int4, Float }

/// <summary>Where a setting came from in quant.yaml, for diagnostics raised after parsing.</summary>
public readonly record struct SourceSpan(string File, int Line, int Column);

/// <summary>A per-layer override (first match wins). Null fields inherit the quantize section.</summary>
public sealed record LayerRule(string Match, int? Bits, int? GroupSize, bool Skip, SourceSpan Where)
{
    /// <summary>A GGUF tensor type for the matching linears (format gguf only), replacing the mix's choice.</summary>
    public Gguf.GgmlType? GgufType { get; init; }

    public bool Matches(string name) => Glob.IsMatch(name, Match);
}

public sealed record CalibrationSpec(string Data, int Samples, int SequenceLength, long Seed)
{
    /// <summary>calibration.stream_dtype: bf16 keeps the calibration streams in bf16 (half the memory;
    /// every use upcasts to fp32, so results differ slightly from fp32 streams).</summary>
    public bool Bf16Stream { get; init; }
}

/// <summary>quant.yaml's quantize section: the method's scheme, the Hessian source (layer-wise or
/// output-adaptive), the rotation and the per-layer rules.</summary>
public sealed record QuantizeSpec
{
    public QuantScheme Scheme { get; init; } = new GptqScheme();
    /// <summary>Set when hessian: output_adaptive.</summary>
    public OacOptions? Oac { get; init; }
    /// <summary>Set when quantize.awq is given: AWQ's scales and clips before the method's solves.</summary>
    public Awq.AwqOptions? Awq { get; init; }
    /// <summary>Statistics and forward passes are needed: the method's, or AWQ's search.</summary>
    public bool NeedsCalibration => Scheme.NeedsCalibration || Awq is not null;
    /// <summary>The importance matrix file when hessian: imatrix (llama.cpp's GGUF imatrix or legacy .dat).</summary>
    public string? Imatrix { get; init; }
    /// <summary>Set when rotate: hadamard.</summary>
    public RotationOptions? Rotation { get; init; }
    public IReadOnlyList<LayerRule> Layers { get; init; } = [];

    public QuantMethod Method => Scheme.Method;
    public int Bits => Scheme.Bits;
    public int GroupSize => Scheme.GroupSize;
    public bool Symmetric => Scheme.Symmetric;
    public double Damp => Scheme.Damp;
    public bool ActOrder => Scheme.ActOrder;
    public bool StaticGroups => Scheme.StaticGroups;
    /// <summary>GPTAQ needs the float stream (X_f); GPTQ+ResComp does not (D = 0, spec §5.3).</summary>
    public bool NeedsFloatStream => Scheme is GptaqScheme;

    /// <summary>The plan for one linear: null when it stays unquantized.</summary>
    public SolverOptions? PlanFor(string linearName)
    {
        var rule = RuleFor(linearName);
        if (rule is { Skip: true } || Scheme is NoneScheme) return null;
        return Scheme.Options(rule?.Bits ?? Scheme.Bits, rule?.GroupSize ?? Scheme.GroupSize);
    }

    /// <summary>The first layer rule matching a linear, or null.</summary>
    public LayerRule? RuleFor(string linearName) => Layers.FirstOrDefault(r => r.Matches(linearName));

    /// <summary>The scheme part of dotquant.json (also hashed into the fingerprint).</summary>
    public JsonObject ToJson()
    {
        var j = Scheme.ToJson();
        j["hessian"] = Imatrix is not null ? "imatrix" : Oac is null ? "layer" : "output_adaptive";
        if (Imatrix is not null) j["imatrix"] = Path.GetFileName(Imatrix);
        if (Oac is { } oac) j["output_adaptive"] = oac.ToJson();
        if (Rotation is { } rot) j["rotation"] = rot.ToJson();
        if (Awq is { } awq) j["awq"] = awq.ToJson();
        return j;
    }
}

/// <summary>A float model to restore from a NuGet feed instead of a folder.</summary>
public sealed record ModelPackageRef(string Id, string Version, string Source);

public sealed record OutputSpec(string Name, OutputFormat Format, bool Embed, string? PackageId, string? PackageVersion, string? PackageAuthors)
{
    /// <summary>output.gguf.type (format gguf): the file type, a llama-quantize name.</summary>
    public Gguf.GgufRecipe? Gguf { get; init; }
    /// <summary>The model file's name inside the output folder (format gguf), e.g. name-q4_k_m.gguf.</summary>
    public string? GgufFileName => Gguf is { } r ? $"{Name}-{r.Name}.gguf" : null;
    /// <summary>output.onnx.head (format onnx).</summary>
    public OnnxHead OnnxHead { get; init; } = OnnxHead.Int8;
    /// <summary>output.onnx.accuracy_level (format onnx): MatMulNBits' accuracy_level, 4 = activations rounded
    /// to int8 in the product (ORT's fast CPU path, as llama.cpp does), 0 = fp32 activations (what `eval` computes).</summary>
    public int OnnxAccuracyLevel { get; init; } = 4;

    /// <summary>transformers' default max_shard_size (5GB).</summary>
    public const long DefaultShardBytes = 5_000_000_000;
    /// <summary>output.shard_size: the safetensors files are cut into shards of at most this many bytes.</summary>
    public long ShardBytes { get; init; } = DefaultShardBytes;
}

public sealed record PerplexitySpec(string Data, int? SequenceLength, int? MaxSequences);

/// <summary>The quality gate: relative (10%) or absolute increase of perplexity allowed.</summary>
public sealed record GateSpec(double MaxIncrease, bool Relative)
{
    /// <summary>The highest perplexity after quantization this gate allows.</summary>
    public double Allowed(double before) => Relative ? before * (1 + MaxIncrease) : before + MaxIncrease;

    /// <summary>The one place a gate is judged: on every run, from the measurements (fresh or recorded
    /// in a cached package), never from a stored verdict.</summary>
    public bool Judge(double before, double after) => after <= Allowed(before);

    public string Limit => Relative ? $"+{MaxIncrease * 100:0.##}%" : $"+{MaxIncrease:0.####}";
}

/// <summary>Zero-shot tasks run before and after quantization (resolved task files).</summary>
public sealed record TasksSpec(IReadOnlyList<string> Files, int? Limit);

/// <param name="RtnBaseline">Also measure round-to-nearest's loss tr(ΔW H ΔWᵀ) on each linear's own
/// statistics, to show what the calibrator gained (rtn_loss in reports and dotquant.json). It costs
/// about one more n²-by-rows product per linear (5% of a GPTQ run), hence off unless asked for.</param>
public sealed record EvaluateSpec(PerplexitySpec? Perplexity, GateSpec? Gate, TasksSpec? Tasks = null, bool RtnBaseline = false);

/// <summary>quant.yaml v1, validated, with paths resolved against the manifest's folder.</summary>
public sealed record QuantManifest
{
    public required string Path { get; init; }
    /// <summary>The model folder; empty until a <see cref="ModelPackage"/> is resolved.</summary>
    public required string ModelPath { get; init; }
    public ModelPackageRef? ModelPackage { get; init; }
    public CalibrationSpec? Calibration { get; init; }
    public required QuantizeSpec Quantize { get; init; }
    public required OutputSpec Output { get; init; }
    public EvaluateSpec? Evaluate { get; init; }
}

/// <summary>Globs on module names: <c>*</c> any run of characters, <c>?</c> one character.</summary>
public static class Glob
{
    public static bool IsMatch(string name, string pattern)
    {
        var regex = "^" + System.Text.RegularExpressions.Regex.Escape(pattern).Replace("\\*", ".*").Replace("\\?", ".") + "$";
        return System.Text.RegularExpressions.Regex.IsMatch(name, regex);
    }
}
