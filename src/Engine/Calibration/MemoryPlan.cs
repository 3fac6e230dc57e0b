using System.Text.Json.Nodes;
using DotQuant.Engine.Diagnostics;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.IO;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Quantizers;

namespace DotQuant.Engine.Calibration;

/// <summary>The anonymous memory a run needs at its peak, predicted from config.json shapes and the
/// manifest before any weight is read. Memory-mapped checkpoint pages are not counted: they are file
/// pages the kernel can drop. Calibration holds one block (fp32 once its linears are solved), the
/// streams, the largest linear's statistics with its factorization and solver working set, and one
/// batch's forward temporaries; evaluation holds one block, a pass of hidden states and the head.</summary>
public sealed record MemoryPlan
{
    /// <summary>The .NET runtime with libtorch loaded (measured: ~0.35 GiB on Linux x64).</summary>
    public const long RuntimeBytes = 400L << 20;

    public long Runtime { get; init; } = RuntimeBytes;
    /// <summary>One block, fp32 once solved (+ GPTAQ's float copy of it).</summary>
    public long Block { get; init; }
    /// <summary>X_q (and GPTAQ's X_f) for every calibration sequence, plus one batch being advanced.</summary>
    public long Streams { get; init; }
    /// <summary>The largest linear's H (and D, P, R) with its factorization and the solver's copies of W.</summary>
    public long Solver { get; init; }
    /// <summary>One batch through a block (MLP intermediate, attention, the captured input).</summary>
    public long Activations { get; init; }
    /// <summary>OAC: the block's H̄ (all of them with schedule once), saved inputs and gradients.</summary>
    public long OutputAdaptive { get; init; }
    /// <summary>Evaluation: a pass of hidden states, the fp32 head and a slice of logits, one block.</summary>
    public long Evaluation { get; init; }
    /// <summary>The hidden states an evaluation pass may hold (fits the limit).</summary>
    public long EvaluationBudget { get; init; } = DefaultBudget;
    public long? Limit { get; init; }
    public string LimitSource { get; init; } = "";

    public long Calibration => Block + Streams + Solver + Activations + OutputAdaptive;
    public long Peak => Runtime + Math.Max(Calibration, Evaluation);

    const long DefaultBudget = global::DotQuant.Engine.Evaluation.LayerMajor.DefaultActivationBudget;

    public string Summary() =>
        $"memory plan: peak {ByteSize.Format(Peak)} = runtime {ByteSize.Format(Runtime)} + max(calibration {ByteSize.Format(Calibration)} " +
        $"[block {ByteSize.Format(Block)}, streams {ByteSize.Format(Streams)}, solver {ByteSize.Format(Solver)}, activations {ByteSize.Format(Activations)}" +
        (OutputAdaptive > 0 ? $", output-adaptive {ByteSize.Format(OutputAdaptive)}" : "") +
        $"], evaluation {ByteSize.Format(Evaluation)})" + (Limit is long l ? $"; limit {ByteSize.Format(l)} ({LimitSource})" : "");

    public JsonObject ToJson() => new()
    {
        ["peak_bytes"] = Peak, ["runtime_bytes"] = Runtime, ["block_bytes"] = Block, ["streams_bytes"] = Streams, ["solver_bytes"] = Solver,
        ["activations_bytes"] = Activations, ["output_adaptive_bytes"] = OutputAdaptive, ["evaluation_bytes"] = Evaluation,
        ["evaluation_budget_bytes"] = EvaluationBudget, ["limit_bytes"] = Limit, ["limit_source"] = LimitSource,
    };

    /// <summary>The plan for a run of <paramref name="m"/> on <paramref name="model"/> (shapes only).</summary>
    public static MemoryPlan Predict(QuantManifest m, RunPlan plan, DecoderModel model, long? limit = null, string limitSource = "")
    {
        var c = model.Config;
        var q = m.Quantize;
        long h = c.HiddenSize, f = c.IntermediateSize, v = c.VocabSize;
        var planned = plan.Linears.Where(l => l.Options is not null).ToList();
        bool calibrated = q.Method != QuantMethod.Rtn;
        bool gptaq = q.NeedsFloatStream;
        long samples = calibrated ? m.Calibration!.Samples : 0, length = calibrated ? m.Calibration!.SequenceLength : 0;
        long tokens = samples * length;
        long batchTokens = calibrated ? Math.Max(length, Math.Min(tokens, ActivationStream.TokensPerBatch / Math.Max(1, length) * length)) : 0;

        // One block: every tensor under the block prefix, fp32 once solved.
        long block = Enumerable.Range(0, model.BlockCount).Max(b => BlockBytes(model, b));
        long storedBlock = Enumerable.Range(0, model.BlockCount).Max(b => StoredBytes(model, b));
        if (gptaq) block += storedBlock;

        long streamElement = m.Calibration?.Bf16Stream == true ? 2 : 4;
        long streams = calibrated ? tokens * h * streamElement * (gptaq ? 2 : 1) + 2 * batchTokens * h * 4 : 0;

        // The largest solve: H (the group's statistics; copied by the solver unless the linear is its
        // last user, then consumed), two n² intermediates of the factorization, GPTAQ's D/P and
        // ResComp's C/R, act order's permuted copy, and the solver's copies of W.
        long solver = 0;
        var planOf = plan.Linears.ToDictionary(l => l.Linear.Name, StringComparer.Ordinal);
        for (int b = 0; b < model.BlockCount; b++)
            foreach (var group in model.LinearLayout(b))
            {
                var active = group.Where(l => planOf[l.Name].Options is not null).ToList();
                for (int i = 0; i < active.Count; i++)
                {
                    var o = planOf[active[i].Name].Options!;
                    long mm = active[i].OutFeatures, n = active[i].InFeatures;
                    bool shared = q.Oac is null && i < active.Count - 1;
                    long hessians = o.Kind == SolverKind.Rtn ? 0
                        : 3 + (shared || o.Kind != SolverKind.Gptq ? 1 : 0) + (o.ActOrder ? 1 : 0) + (gptaq ? 3 : 0) + (o.UsesResComp ? 2 : 0);
                    long weights = 18 + (o.UsesResComp ? 4 : 0);       // w0, W, Q, dequantized (fp32), codes, packed
                    solver = Math.Max(solver, hessians * n * n * 4 + weights * mm * n);
                }
            }

        long activations = calibrated ? batchTokens * (3 * f + 8 * h + (long)c.NumHeads * c.HeadDim) * 4 + batchTokens * Math.Max(f, h) * 4 : 0;

        long oac = 0;
        if (q.Oac is { } oo && calibrated)
        {
            long perBlock = model.LinearLayout(0).SelectMany(g => g).Sum(l => l.InFeatures * l.InFeatures * 4);
            long hbar = oo.Schedule == OacSchedule.Once ? perBlock * model.BlockCount : perBlock;
            long saved = Math.Min(OutputAdaptiveHessian.InMemoryActivations, tokens * h * 4 * model.BlockCount) + 2 * tokens * h * 4;
            long graph = length * (3 * f + 10 * h) * 4 * 3 + storedBlock * 2;
            oac = hbar + saved + graph;
        }

        // Evaluation: one block (fp32 conversion of the largest linear on the fly), head, logits.
        long largest = model.LinearLayout(0).SelectMany(g => g).Max(l => l.OutFeatures * l.InFeatures);
        long evalFixed = storedBlock + block / 2 + largest * 4 + v * h * 4 + (128L << 20) + 4096 * (3 * f + 8 * h) * 4;
        long budget = DefaultBudget;
        if (limit is long lim)
        {
            long room = lim - RuntimeBytes - evalFixed;
            budget = Math.Clamp(room, 64L << 20, DefaultBudget);
        }
        return new MemoryPlan
        {
            Block = block, Streams = streams, Solver = solver, Activations = activations, OutputAdaptive = oac,
            Evaluation = evalFixed + budget, EvaluationBudget = budget, Limit = limit, LimitSource = limitSource,
        };
    }

    static long BlockBytes(DecoderModel model, int b)
    {
        string prefix = model.BlockPrefix(b);
        return model.Weights.Names.Where(n => n.StartsWith(prefix, StringComparison.Ordinal))
            .Sum(n => model.Weights.Describe(n) is { } d ? d.Shape.Aggregate(1L, (x, y) => x * y) * 4 : 0);
    }

    static long StoredBytes(DecoderModel model, int b)
    {
        string prefix = model.BlockPrefix(b);
        return model.Weights.Names.Where(n => n.StartsWith(prefix, StringComparison.Ordinal)).Sum(n => model.Weights.Describe(n)?.Bytes ?? 0);
    }

    /// <summary>Refuses with DQ0154 when the peak exceeds the limit, naming the settings that would fit.</summary>
    public void Check(QuantManifest m)
    {
        if (Limit is not long limit || Peak <= limit) return;
        var advice = new List<string>();
        if (m.Calibration is { } cal && Streams > 0)
        {
            if (!cal.Bf16Stream) advice.Add($"calibration.stream_dtype: bf16 (streams {ByteSize.Format(Streams)} → about half)");
            long perSample = Streams / Math.Max(1, cal.Samples);
            long room = limit - (Peak - Streams);
            if (perSample > 0 && room > 0 && room / perSample < cal.Samples)
                advice.Add($"calibration.samples: {Math.Max(1, room / perSample)} (or a shorter sequence_length)");
        }
        if (m.Quantize.Oac is { Schedule: OacSchedule.Once }) advice.Add("output_adaptive.schedule: sequential (schedule once keeps every H̄ in memory)");
        if (advice.Count == 0) advice.Add("a machine with more memory (the largest block and its solver alone need this much)");
        throw new DotQuantException(ErrorCodes.MemoryPlan,
            $"{Summary()} exceeds the limit. Settings that would fit: {string.Join("; ", advice)}. Raise the limit with --max-memory if the estimate is too cautious.", m.Path);
    }

    /// <summary>The memory this process may use: its cgroup's limit when there is one (v1 or v2), else MemAvailable.</summary>
    public static (long Bytes, string Source) Available()
    {
        long? cgroup = CgroupLimit();
        long? available = null;
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
                if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                    available = long.Parse(line[13..].Trim().Split(' ')[0]) * 1024;
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        if (cgroup is long cg && (available is null || cg < available)) return (cg, "cgroup memory limit");
        if (available is long a) return (a, "available memory");
        return (GC.GetGCMemoryInfo().TotalAvailableMemoryBytes, "available memory");
    }

    static long? CgroupLimit()
    {
        try
        {
            if (!File.Exists("/proc/self/cgroup")) return null;
            foreach (var line in File.ReadLines("/proc/self/cgroup"))
            {
                var parts = line.Split(':', 3);
                if (parts.Length != 3) continue;
                string? file = parts[1] == "memory" ? $"/sys/fs/cgroup/memory{parts[2]}/memory.limit_in_bytes"
                    : parts[0] == "0" && parts[1] == "" ? $"/sys/fs/cgroup{parts[2]}/memory.max" : null;
                if (file is not null && File.Exists(file) && long.TryParse(File.ReadAllText(file).Trim(), out long v) && v < (1L << 50))
                    return v;
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return null;
    }
}
