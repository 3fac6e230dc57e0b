using DotQuant.Engine.IO;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Quantizers;

namespace DotQuant.Engine.Calibration;

/// <summary>The disk space a run needs in its output folder's file system, predicted from shapes before
/// any work, so that a full disk is refused at the start (DQ0155) instead of hours in: the output itself
/// (the run writes it in its working folder beside the destination and swaps it in, so the space is the
/// output's, not twice it), and what the run keeps to be resumed — the calibration stream after each
/// block, OAC's spilled H̄, QuaRot's rotated copy of the model. An estimate with a margin (grids, headers,
/// metadata), not a promise: a run that still meets a full disk stops with DQ0155 and resumes.</summary>
public sealed record SpacePlan(long Output, long Resume, long Rotated, long OutputAdaptive)
{
    /// <summary>Headers, grids and metadata the per-tensor sizes leave out.</summary>
    const double Margin = 1.1;
    const long Slack = 256L << 10;

    public long Total => Output + Resume + Rotated + OutputAdaptive;

    public static SpacePlan Predict(QuantManifest m, RunPlan plan, DecoderModel model, bool resumable)
    {
        var planned = plan.Linears.Where(l => l.Options is not null).ToDictionary(l => l.Linear.Name + ".weight", l => l.Options!, StringComparer.Ordinal);
        double output = 0;
        long floatBytes = 0;
        foreach (var name in model.Weights.Names)
        {
            long bytes = model.Weights.Describe(name)?.Bytes ?? 0;
            long elements = model.Weights.Describe(name) is { } d ? d.Shape.Aggregate(1L, (a, b) => a * b) : 0;
            floatBytes += elements * 4;
            output += planned.TryGetValue(name, out var o) ? elements * Bits(o) / 8.0 : bytes;
        }
        var c = model.Config;
        bool calibrated = m.Quantize.NeedsCalibration && m.Calibration is not null;
        long tokens = calibrated ? (long)m.Calibration!.Samples * m.Calibration.SequenceLength : 0;
        long element = m.Calibration?.Bf16Stream == true ? 2 : 4;
        long resume = resumable && calibrated ? tokens * c.HiddenSize * element * (m.Quantize.NeedsFloatStream ? 2 : 1) : 0;
        long rotated = m.Quantize.Rotation is not null ? floatBytes : 0;
        long oac = 0;
        if (m.Quantize.Oac is not null && calibrated)
            oac = Enumerable.Range(0, model.BlockCount).Sum(b => model.LinearLayout(b).Sum(g => g[0].InFeatures * g[0].InFeatures * 4L));
        // The tokenizer and config files are copied through as they are.
        long copied = Directory.EnumerateFiles(model.Weights.Directory).Where(f => !f.EndsWith(".safetensors", StringComparison.Ordinal)).Sum(f => new FileInfo(f).Length);
        return new SpacePlan((long)(output * Margin) + copied + Slack, resume, rotated, oac);
    }

    /// <summary>Stored bits per weight of a solved linear (its grids included, roughly).</summary>
    static double Bits(SolverOptions o) => o.Kind switch
    {
        SolverKind.BiLLM => 3,                                      // signs, residual signs, flags
        SolverKind.SpQR => (o.Spqr?.Bits ?? 3) + 2,                 // codes, statistics and outliers
        _ when o.GgufType is { } t => Gguf.GgmlTypeInfo.Of(t).BitsPerWeight,
        _ => o.Bits + (o.GroupSize > 0 ? 48.0 / o.GroupSize : 0),  // codes + fp16 scale, zero per group
    };

    public string Summary() =>
        $"disk plan: about {ByteSize.Format(Total)} = output {ByteSize.Format(Output)}" +
        (Resume > 0 ? $" + resume stream {ByteSize.Format(Resume)}" : "") +
        (Rotated > 0 ? $" + rotated model {ByteSize.Format(Rotated)}" : "") +
        (OutputAdaptive > 0 ? $" + output-adaptive Hessians {ByteSize.Format(OutputAdaptive)}" : "");
}
