using System.Text.Json.Nodes;
using DotQuant.Runtime;
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
    /// <summary>The anonymous memory of the .NET runtime with libtorch loaded, the tokenizer and the
    /// calibration ids (measured: 63–97 MiB before the first tensor; libtorch's ~300 MB of code is file pages).</summary>
    public const long RuntimeBytes = 96L << 20;
    /// <summary>libtorch's code and the runtime's, mapped from files: not anonymous, but resident, so a
    /// limit must leave room for them (measured: ~0.3 GiB of RSS beyond RssAnon).</summary>
    public const long CodeBytes = 320L << 20;

    public long Runtime { get; init; } = RuntimeBytes;
    /// <summary>One block as stored (a solved linear keeps its codes and grids, less than bf16), plus
    /// GPTAQ's float copy of it.</summary>
    public long Block { get; init; }
    /// <summary>X_q (and GPTAQ's X_f) for every calibration sequence, plus one batch being advanced.</summary>
    public long Streams { get; init; }
    /// <summary>The largest linear's H (and D, P, R) with its factorization and the solver's copies of W.</summary>
    public long Solver { get; init; }
    /// <summary>Gathering a group's statistics: one batch through the block (MLP intermediate, attention),
    /// the captured input and the H being accumulated. Not at the same time as <see cref="Solver"/>.</summary>
    public long Activations { get; init; }
    /// <summary>OAC computing H̄: the later blocks' saved inputs, the chunks' gradients, one chunk's
    /// autograd graph. Not at the same time as the statistics or the solves.</summary>
    public long OutputAdaptive { get; init; }
    /// <summary>OAC: one block's H̄, kept through its solves (schedule once keeps the others on disk).</summary>
    public long OutputAdaptiveHessians { get; init; }
    /// <summary>Staged layer-wise calibration: every batch's residual and next group input kept between
    /// groups (0 when they would not fit in 80% of the limit with the rest: the group inputs are then
    /// recomputed from the block input, the same bits at about twice the forward work).</summary>
    public long Stages { get; init; }
    /// <summary>Evaluation: a pass of hidden states, the fp32 head and a slice of logits, one block.</summary>
    public long Evaluation { get; init; }
    /// <summary>The hidden states an evaluation pass may hold (fits the limit).</summary>
    public long EvaluationBudget { get; init; } = DefaultBudget;
    /// <summary>The largest single tensor a forward batch allocates (the MLP intermediate of a batch, or
    /// the head's logits slice when evaluating): larger allocations are rare and few (NativeHeap.Sizes).</summary>
    public long LargestForwardTemporary { get; init; }
    /// <summary>One forward batch's hidden states (batch tokens × hidden × 4 bytes).</summary>
    public long BatchActivation { get; init; }
    public long? Limit { get; init; }
    public string LimitSource { get; init; } = "";

    public long Calibration => Block + Streams + Math.Max(Math.Max(Solver, Activations) + OutputAdaptiveHessians, OutputAdaptive) + Stages;
    public long Peak => Runtime + Math.Max(Calibration, Evaluation);

    const long DefaultBudget = global::DotQuant.Engine.Evaluation.LayerMajor.DefaultActivationBudget;

    public string Summary() =>
        $"memory plan: peak {ByteSize.Format(Peak)} = runtime {ByteSize.Format(Runtime)} + max(calibration {ByteSize.Format(Calibration)} " +
        $"[block {ByteSize.Format(Block)}, streams {ByteSize.Format(Streams)}, " +
        (OutputAdaptive > 0
            ? $"max(max(solver {ByteSize.Format(Solver)}, statistics {ByteSize.Format(Activations)}) + H̄ {ByteSize.Format(OutputAdaptiveHessians)}, output-adaptive {ByteSize.Format(OutputAdaptive)})"
            : $"max(solver {ByteSize.Format(Solver)}, statistics {ByteSize.Format(Activations)})") +
        (Stages > 0 ? $", staged states {ByteSize.Format(Stages)}" : "") +
        $"], evaluation {ByteSize.Format(Evaluation)})" + (Limit is long l ? $"; limit {ByteSize.Format(l)} ({LimitSource})" : "");

    public JsonObject ToJson() => new()
    {
        ["peak_bytes"] = Peak, ["runtime_bytes"] = Runtime, ["block_bytes"] = Block, ["streams_bytes"] = Streams, ["solver_bytes"] = Solver,
        ["activations_bytes"] = Activations, ["output_adaptive_bytes"] = OutputAdaptive, ["output_adaptive_hessians_bytes"] = OutputAdaptiveHessians, ["staged_states_bytes"] = Stages, ["evaluation_bytes"] = Evaluation,
        ["evaluation_budget_bytes"] = EvaluationBudget, ["limit_bytes"] = Limit, ["limit_source"] = LimitSource,
    };

    /// <summary>The solver's working set per weight at the end of the column loop: W, its original, Q, the
    /// codes and error block, the assembled result and its dequantized weight, and what the heap keeps of
    /// them between columns (measured on Llama-2-7B's down_proj, 11008 inputs: 31 to 36 bytes per weight
    /// over eight blocks; the plan takes the largest).</summary>
    const long SolverBytesPerWeight = 36;
    /// <summary>The factorization's own copies per weight (W and its original, fp32).</summary>
    const long FactorizationBytesPerWeight = 8;
    /// <summary>One batch's MLP temporaries per token, in units of the intermediate size: gate, up, the
    /// activation, the product and the next state's input (measured: 4.8 on Llama-2-7B, 2.7 on llama-tiny).</summary>
    const long MlpWidths = 5;

    /// <summary>The plan for a run of <paramref name="m"/> on <paramref name="model"/> (shapes only). Every
    /// term is anonymous memory: the checkpoint's mapped pages and libtorch's code are file pages. The
    /// coefficients were measured (docs/reliability.md, "Memory"); the bench's memory section checks the
    /// plan against the measured peak per method.</summary>
    public static MemoryPlan Predict(QuantManifest m, RunPlan plan, DecoderModel model, long? limit = null, string limitSource = "")
    {
        var c = model.Config;
        var q = m.Quantize;
        long h = c.HiddenSize, f = c.IntermediateSize, v = c.VocabSize;
        long heads = c.NumHeads, kv = (long)c.NumKvHeads * c.HeadDim;
        bool calibrated = q.NeedsCalibration;
        bool gptaq = q.NeedsFloatStream;
        long samples = calibrated ? m.Calibration!.Samples : 0, length = calibrated ? m.Calibration!.SequenceLength : 0;
        long tokens = samples * length;
        long batchTokens = calibrated ? Math.Max(length, Math.Min(tokens, ActivationStream.TokensPerBatch / Math.Max(1, length) * length)) : 0;

        // One block: every tensor under the block prefix as stored (GPTAQ also keeps its float copy).
        long storedBlock = Enumerable.Range(0, model.BlockCount).Max(b => StoredBytes(model, b));
        long block = storedBlock * (gptaq ? 2 : 1);

        long streamElement = m.Calibration?.Bf16Stream == true ? 2 : 4;
        long streams = calibrated ? tokens * h * streamElement * (gptaq ? 2 : 1) : 0;

        // One forward batch: attention's scores (sequences × heads × T², and half as much again for the
        // softmax's temporaries: measured 1.5× on llama-tiny and a TinyLlama shape) with q, k, v and the
        // output; or the MLP's wide temporaries. The larger of the two.
        // QuaRot's online Hadamard before down_proj adds a transformed copy of the activation and its temporary.
        long mlpWidths = MlpWidths + (q.Rotation is { DownProj: true } ? 2 : 0);
        // halves: scores counted 3/2 times in calibration batches; 5/2 in the evaluation's, whose windows
        // pass the block as one batch (measured on llama-tiny RTN: 225–270 MiB against 214 planned at 3/2).
        long Attention(long batch, long seqLen, long halves = 3) => halves * (batch / Math.Max(1, seqLen)) * heads * seqLen * seqLen * 4 / 2;
        long Forward(long batch, long seqLen, long halves = 3) =>
            Math.Max(Attention(batch, seqLen, halves) + batch * (2 * h + 2 * kv) * 4, mlpWidths * batch * f * 4);
        long forward = calibrated ? Forward(batchTokens, length) : 0;

        // Per group: gathering its statistics (the fp64 H being accumulated, GPTAQ's D, and one batch's forward)
        // or solving a linear: the H the group keeps for its other linears, the solver's own H, the
        // factorization (L and H⁻¹ at once, then U), GPTAQ's D copy and P, ResComp's C and R, act order's
        // permuted copy, and the solver's working set per weight.
        long solver = 0, statistics = 0;
        long largest = model.LinearLayout(0).SelectMany(g => g).Max(l => l.OutFeatures * l.InFeatures);
        var planOf = plan.Linears.ToDictionary(l => l.Linear.Name, StringComparer.Ordinal);
        for (int b = 0; b < model.BlockCount; b++)
            foreach (var group in model.LinearLayout(b))
            {
                var active = group.Where(l => planOf[l.Name].Options is not null).ToList();
                for (int i = 0; i < active.Count; i++)
                {
                    var o = planOf[active[i].Name].Options!;
                    long mm = active[i].OutFeatures, n = active[i].InFeatures, nn = n * n * 4, weights = mm * n;
                    if (o.Kind == SolverKind.Rtn)
                    {
                        solver = Math.Max(solver, 13 * weights);
                        continue;
                    }
                    bool shared = q.Oac is null && i < active.Count - 1;
                    long held = (o.Kind != SolverKind.Gptq || shared ? 1 : 0) + (gptaq ? 1 : 0);
                    long extras = (o.ActOrder ? 1 : 0) + (gptaq ? 2 : 0) + (o.UsesResComp ? 2 : 0);
                    long factorizing = (held + 1 + 2 + extras) * nn + FactorizationBytesPerWeight * weights;
                    long columns = (held + 2 + extras) * nn + (SolverBytesPerWeight + (o.UsesResComp ? 4 : 0)) * weights;
                    solver = Math.Max(solver, Math.Max(factorizing, columns));
                    // The fp64 sums of H (and D) and one batch's fp32 product being added to them.
                    if (calibrated) statistics = Math.Max(statistics, ((gptaq ? 4 : 2) + 1) * nn + forward);
                }
            }
        // GPTAQ advances two streams, the float one through the block's float copy: two forwards at once,
        // each with its captured group input.
        long widestInput = model.LinearLayout(0).SelectMany(g => g).Max(l => l.InFeatures);
        long activations = calibrated ? Math.Max(statistics, gptaq ? 2 * (forward + batchTokens * widestInput * 4) : forward) : 0;
        // AWQ's search (before a block's statistics): the block made fp32, the widest group's weights three
        // times (as loaded, their fp32 originals, a trial), its stage states and float inspected outputs
        // (kept up to AwqTransform.CacheBytes), one forward and the clipping search's strided inputs.
        if (q.Awq is { } awqOptions && calibrated)
        {
            long groupWeights = model.LinearLayout(0).Max(g => g.Sum(l => l.OutFeatures * l.InFeatures)) * 4;
            long cache = Math.Min(Awq.AwqTransform.CacheBytes, tokens * (2 * h + widestInput + Math.Max(h, 2 * f)) * 4);
            activations = Math.Max(activations, storedBlock + 3 * groupWeights + cache + forward + awqOptions.ClipTokens * widestInput * 4);
        }

        long oac = 0, hbar = 0;
        if (q.Oac is not null && calibrated)
        {
            hbar = model.LinearLayout(0).SelectMany(g => g).Sum(l => l.InFeatures * l.InFeatures * 4);
            // The later blocks' saved inputs (on disk above the in-memory cap), and per token two hidden
            // states: the forward sweep's, then the gradient being consumed and the one being produced.
            long saved = Math.Min(OutputAdaptiveHessian.InMemoryActivations, tokens * h * 4 * model.BlockCount) + 2 * tokens * h * 4;
            // One chunk's autograd graph (short sequences are batched up to OutputAdaptiveHessian.ChunkTokens):
            // the tensors a block's backward keeps per token (MLP 3f, attention and norms ~10h), the
            // softmax's probabilities, the block's weights and their gradients' buffers; the H̄ sums.
            long chunk = OutputAdaptiveHessian.SequencesPerChunk(length) * length;
            long graph = chunk * (3 * f + 10 * h) * 4 + Attention(chunk, length) + storedBlock * 2;
            // The H̄ sums are fp64 (twice the fp32 H̄), with one chunk's fp32 product being added to them.
            long product = model.LinearLayout(0).SelectMany(g => g).Max(l => l.InFeatures * l.InFeatures * 4);
            oac = 2 * hbar + product + saved + graph;
        }

        // Evaluation: one block (the largest linear made fp32 for its product), the fp32 head, a slice of
        // logits, one batch's forward, and the hidden states of a pass (all of its windows, up to the budget).
        bool evaluates = m.Evaluate is not null;
        long evalLength = m.Evaluate?.Perplexity?.SequenceLength ?? 2048, evalBatch = Math.Max(evalLength, 4096 / Math.Max(1, evalLength) * evalLength);
        // Logits are formed ~128 MB at a time, with their log-softmax beside them.
        long logits = 2 * Math.Min(128L << 20, evalBatch * v * 4);
        // The evaluation text is tokenized whole: the managed strings, pieces and ids cost about 24 bytes per
        // byte of text (measured on WikiText-2's 1.3 MB).
        long text = m.Evaluate?.Perplexity is { } ppl && File.Exists(ppl.Data) ? new FileInfo(ppl.Data).Length * 24 : 0;
        long evalFixed = evaluates ? storedBlock + largest * 4 + v * h * 4 + logits + Forward(evalBatch, evalLength, halves: 5) + text : 0;
        long evalTokens = m.Evaluate?.Perplexity is { MaxSequences: int windows } ? windows * evalLength : long.MaxValue / 16;
        long budget = evaluates ? DefaultBudget : 0;
        if (limit is long lim && evaluates)
        {
            long room = lim - RuntimeBytes - evalFixed;
            budget = Math.Clamp(room, 64L << 20, DefaultBudget);
        }
        long hidden = evaluates ? Math.Min(budget, 2 * evalTokens * h * 4) : 0;
        // Staged layer-wise capture: a residual (hidden) and the widest group input per token, when that
        // still leaves a fifth of the limit free.
        long stages = 0;
        if (calibrated && !gptaq && q.Oac is null && limit is long room80)
        {
            long widest = model.LinearLayout(0).SelectMany(g => g).Max(l => l.InFeatures);
            long bytes = tokens * (h + widest) * 4;
            long rest = RuntimeBytes + Math.Max(block + streams + Math.Max(Math.Max(solver, activations) + hbar, oac), evalFixed + hidden);
            if (rest + bytes <= room80 / 5 * 4) stages = bytes;
        }
        long largestTemporary = Math.Max(Math.Max(batchTokens, evaluates ? evalBatch : 0) * f * 4, Math.Max(largest * 4, evaluates ? logits / 2 : 0));
        return new MemoryPlan
        {
            LargestForwardTemporary = largestTemporary,
            BatchActivation = Math.Max(batchTokens, evaluates ? evalBatch : 0) * h * 4,
            Block = block, Streams = streams, Solver = solver, Activations = activations, OutputAdaptive = oac, OutputAdaptiveHessians = hbar, Stages = stages,
            Evaluation = evalFixed + hidden, EvaluationBudget = budget, Limit = limit, LimitSource = limitSource,
        };
    }

    static long StoredBytes(DecoderModel model, int b)
    {
        string prefix = model.BlockPrefix(b);
        return model.Weights.Names.Where(n => n.StartsWith(prefix, StringComparison.Ordinal)).Sum(n => model.Weights.Describe(n)?.Bytes ?? 0);
    }

    /// <summary>Refuses with DQ0154 when the peak exceeds the limit, naming the settings that would
    /// make it fit (each checked by planning the run again with it).</summary>
    public void Check(QuantManifest m, RunPlan plan, DecoderModel model)
    {
        if (Limit is not long limit || Peak + CodeBytes <= limit) return;
        bool Fits(QuantManifest changed) => Predict(changed, plan, model, limit, LimitSource).Peak + CodeBytes <= limit;
        var advice = new List<string>();
        if (m.Calibration is { } cal && Streams > 0)
        {
            if (!cal.Bf16Stream && Fits(m with { Calibration = cal with { Bf16Stream = true } }))
                advice.Add("calibration.stream_dtype: bf16");
            int lo = 0, hi = cal.Samples - 1;               // the most samples that fit
            while (lo < hi)
            {
                int mid = (lo + hi + 1) / 2;
                if (Fits(m with { Calibration = cal with { Samples = mid } })) lo = mid; else hi = mid - 1;
            }
            if (lo > 0) advice.Add($"calibration.samples: {lo}");
        }
        string fix = advice.Count > 0
            ? $"Settings that would fit: {string.Join("; or ", advice)}."
            : "No setting of the manifest makes it fit (one block and the largest linear's solve need this much): use a machine with more memory.";
        throw new DotQuantException(ErrorCodes.MemoryPlan,
            $"{Summary()}, with {ByteSize.Format(CodeBytes)} of mapped code beside it, exceeds the limit. {fix} Raise the limit with --max-memory if the estimate is too cautious.", m.Path);
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
