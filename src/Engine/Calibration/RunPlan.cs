using DotQuant.Engine.Gguf;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Quantizers;

namespace DotQuant.Engine.Calibration;

/// <summary>One linear's plan: its solver options, or why it stays in full precision.</summary>
public sealed record LinearPlan(LinearSpec Linear, int Block, SolverOptions? Options, string? SkipReason);

/// <summary>What a run will do to each linear, decided before any weight is read: the manifest's
/// scheme and layer rules, and what the output format can store. Warnings (a linear the format
/// cannot pack) are collected, not printed.</summary>
public sealed class RunPlan
{
    readonly Dictionary<string, LinearPlan> _byName;

    RunPlan(List<LinearPlan> linears, List<string> warnings)
    {
        Linears = linears;
        Warnings = warnings;
        _byName = linears.ToDictionary(l => l.Linear.Name, StringComparer.Ordinal);
    }

    /// <summary>Every linear of the model in block and true-sequential order.</summary>
    public IReadOnlyList<LinearPlan> Linears { get; }
    public IReadOnlyList<string> Warnings { get; }

    public SolverOptions? OptionsFor(string linear) => _byName.TryGetValue(linear, out var p) ? p.Options : null;

    /// <summary>The plan of a linear, or null when the name is not one of the model's linears.</summary>
    public LinearPlan? PlanOf(string linear) => _byName.GetValueOrDefault(linear);

    public IReadOnlyDictionary<string, string> SkipReasons =>
        Linears.Where(l => l.SkipReason is not null).ToDictionary(l => l.Linear.Name, l => l.SkipReason!, StringComparer.Ordinal);

    public static RunPlan Create(QuantizeSpec q, OutputSpec output, DecoderModel model)
    {
        var format = output.Format;
        var linears = new List<LinearPlan>();
        var warnings = new List<string>();
        var gguf = output.Gguf is { } recipe ? GgufPackageLayout.For(model.Config, model.Weights, recipe) : null;
        if (format == OutputFormat.Onnx) Onnx.DecoderOnnxGraph.Check(model.Config, model.Weights.Directory);
        for (int b = 0; b < model.BlockCount; b++)
            foreach (var lin in model.LinearLayout(b).SelectMany(g => g))
            {
                var o = q.PlanFor(lin.Name);
                if (o is null)
                {
                    linears.Add(new LinearPlan(lin, b, null, q.Scheme is NoneScheme ? $"method none: stored as {output.Gguf!.Base}" : "skipped by a layers rule"));
                    continue;
                }
                if (format == OutputFormat.Gptq && (lin.InFeatures % 32 != 0 || lin.OutFeatures % 32 != 0 || (o.GroupSize > 0 && lin.InFeatures % o.GroupSize != 0)))
                {
                    string why = $"[{lin.OutFeatures}, {lin.InFeatures}] cannot be packed as GPTQ (dimensions must be multiples of 32 and of the group size)";
                    warnings.Add($"{lin.Name}: {why}; kept in full precision");
                    linears.Add(new LinearPlan(lin, b, null, why));
                    continue;
                }
                if (gguf is not null)
                {
                    linears.Add(OnGgufBlocks(gguf, q, lin, b, o));
                    continue;
                }
                linears.Add(new LinearPlan(lin, b, o, null));
            }
        return new RunPlan(linears, warnings);
    }

    /// <summary>A linear of a GGUF output: the named mix's type for it (or a layer rule's), solved on that
    /// type's blocks; rows no quantized block divides stay F16, as llama-quantize leaves them.</summary>
    static LinearPlan OnGgufBlocks(GgufPackageLayout gguf, QuantizeSpec q, LinearSpec lin, int block, SolverOptions o)
    {
        var mapping = gguf.Require(lin.Name + ".weight");
        var type = gguf.Recipe.TypeFor(mapping.Name, lin.InFeatures, block, gguf.Shape, q.RuleFor(lin.Name)?.GgufType);
        var info = GgmlTypeInfo.Of(type);
        if (type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16)
            return new LinearPlan(lin, block, null, lin.InFeatures % 32 != 0 ? $"rows of {lin.InFeatures} fit no GGUF block; stored as {type}" : $"stored as {type} by a layers rule");
        return new LinearPlan(lin, block, o with { GgufType = type, GroupSize = info.BlockSize, Bits = GgufRecipe.NominalBits(type) }, null);
    }
}
