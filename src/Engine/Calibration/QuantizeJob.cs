using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using DotQuant.Runtime;
using DotQuant.Engine.Distributed;
using DotQuant.Engine.Evaluation;
using DotQuant.Engine.Formats;
using DotQuant.Engine.Awq;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.Imatrix;
using DotQuant.Engine.IO;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Rotation;
using DotQuant.Engine.Tokenization;
using static TorchSharp.torch;

namespace DotQuant.Engine.Calibration;

public sealed record JobResult(string Output, double Seconds, PerplexityResult? Before, PerplexityResult? After, bool GatePassed, IReadOnlyList<LayerReport> Layers)
{
    public IReadOnlyList<TaskResult> TasksBefore { get; init; } = [];
    public IReadOnlyList<TaskResult> TasksAfter { get; init; } = [];
    /// <summary>Blocks a resumed run found already done.</summary>
    public int ResumedBlocks { get; init; }
    /// <summary>Wall seconds by phase (exclusive; with "other" they add up to <see cref="Seconds"/>):
    /// evaluation, calibration data (tokenizing and embedding it), load (a block's weights), capture (the
    /// forward to a group's inputs and OAC's backward, statistics aside), xtx (H += XᵀX), rtn baseline,
    /// factorization, solve (the column loop and grids), advance (the stream through the solved block), write;
    /// "other" is the rest (libtorch start-up, opening the model, planning, publishing).</summary>
    public IReadOnlyDictionary<string, double> Phases { get; init; } = new Dictionary<string, double>();
}

/// <summary>How a run is carried out (not what it computes: none of these change the output).</summary>
public sealed record RunOptions
{
    /// <summary>The output folder is a cache entry keyed by the fingerprint: if another process
    /// completes it first, its (identical) folder is kept.</summary>
    public bool ContentAddressed { get; init; }
    /// <summary>Continue after the last completed block of an interrupted run with the same inputs.</summary>
    public bool Resume { get; init; }
    /// <summary>Refuse (DQ0154) when the memory plan predicts more; null = available memory.</summary>
    public long? MaxMemory { get; init; }
    /// <summary>Per-file digests memoized in the cache (the fingerprint of a large model is not re-read).</summary>
    public FileDigests? Digests { get; init; }
    /// <summary>Sees the finished output folder just before it is swapped into place (a cache seals it).</summary>
    public Action<string>? BeforePublish { get; init; }
    /// <summary>Spread the calibration over these workers (<c>--cluster</c>): each keeps a shard of the
    /// streams and returns its share of the statistics; a group's solves are spread over them
    /// (<see cref="DistributedSolves"/>); this process writes.</summary>
    public ICalibrationCluster? Cluster { get; init; }
    /// <summary>With <see cref="Cluster"/>: solve every linear on this process instead (the same bytes;
    /// tests and the scale-out benchmark compare the two).</summary>
    public bool SolveOnCoordinator { get; init; }
}

/// <summary><c>dotnet quantize run</c>: manifest → plan → streaming model → evaluation before →
/// block-by-block calibration written as it goes → evaluation after, read back from what was written
/// → atomic swap of the output folder. Memory is one block plus the calibration streams whatever the
/// depth (see <see cref="MemoryPlan"/>); every block is a resume point.</summary>
public static class QuantizeJob
{
    /// <summary>The clock's phases and "other" (what no phase covers: loading, planning, tokenizing,
    /// publishing), so the figures add up to the run's wall time.</summary>
    static IReadOnlyDictionary<string, double> Phases(PhaseClock clock, double total)
    {
        var phases = new Dictionary<string, double>(clock.Seconds, StringComparer.Ordinal);
        phases["other"] = Math.Max(0, total - phases.Values.Sum());
        return phases;
    }

    public static string EngineVersion => typeof(QuantizeJob).Assembly.GetName().Version?.ToString(3) ?? "0.0.0";

    public static JobResult Run(QuantManifest m, string outputDir, Action<RunEvent>? onEvent = null, CancellationToken ct = default, RunOptions? options = null)
    {
        var space = new SpaceNeeded();
        try
        {
            return Run(m, outputDir, onEvent, ct, options ?? new RunOptions(), space);
        }
        catch (Exception e) when (e is not DotQuantException { Code: ErrorCodes.DiskFull } && DiskSpace.IsFull(e))
        {
            // Wherever the write failed (a shard, the resume point, the publish), the destination was not
            // touched and the last completed block is kept for --resume.
            throw DiskSpace.Full(outputDir, space.Bytes, e);
        }
    }

    sealed class SpaceNeeded
    {
        public long? Bytes;
    }

    static JobResult Run(QuantManifest m, string outputDir, Action<RunEvent>? onEvent, CancellationToken ct, RunOptions options, SpaceNeeded space)
    {
        var total = Stopwatch.StartNew();
        var (clock, timing) = PhaseClock.Start();
        using var timingScope = timing;
        void Emit(RunEvent e) => onEvent?.Invoke(e);
        var q = m.Quantize;
        if (options.Cluster is not null && q.Awq is not null)
            throw new DotQuantException(ErrorCodes.ManifestCombination, "quantize.awq runs on one machine for now (its search reads the calibration stream, which a cluster's coordinator does not hold)", m.Path);
        var config = ModelConfig.Load(m.ModelPath);
        if (config.Gptq is not null || File.Exists(Path.Combine(m.ModelPath, QuantizedPackage.ManifestFile)))
            throw new DotQuantException(ErrorCodes.UnsupportedModelType, "the model is already quantized; quantize the original floating-point checkpoint", m.ModelPath);
        var tokenizer = HfTokenizer.Load(m.ModelPath);
        string fingerprint = Fingerprint(m, options.Digests, options.Cluster?.Workers ?? 1);
        string destination = Path.Combine(outputDir, m.Output.Name);

        using var run = RunFolder.Open(destination, RunKey(fingerprint), options.Resume);
        var state = options.Resume ? run.LoadState(fingerprint, w => Emit(new WarningEvent(w))) : null;
        using var checkpoint = Checkpoint.Open(m.ModelPath);
        // QuaRot: the float model is rotated first (its function unchanged) and everything after —
        // evaluation, calibration, the package's float tensors — works on the rotated weights.
        QuaRotSource? rotated = null;
        if (q.Rotation is { } rotation)
        {
            var sw = Stopwatch.StartNew();
            rotated = QuaRot.Apply(config, checkpoint, rotation, Path.Combine(run.Scratch, "rotated"), ct);
            Emit(new InfoEvent("rotate", $"Hadamard rotation: residual {rotated.Residual}, heads H{config.HeadDim}, down_proj {(rotated.DownProj?.ToString() ?? "none")} ({sw.Elapsed.TotalSeconds:F1} s)"));
        }
        using var rotatedScope = rotated;
        IWeightSource weights = rotated is null ? checkpoint : rotated;
        using var model = ModelLoader.Open(rotated?.Config ?? config, weights);
        if (q.Awq is not null && !model.HasScalingPoints)
            throw new DotQuantException(ErrorCodes.UnsupportedModelType, $"AWQ has no scaling points for {config.ModelType} blocks yet (the Llama family has them: llama, qwen2, qwen3, mistral, phi3)", m.ModelPath);
        var plan = RunPlan.Create(q, m.Output, model);
        foreach (var w in plan.Warnings) Emit(new WarningEvent(w));
        var (limit, limitSource) = options.MaxMemory is long max ? (max, "--max-memory") : MemoryPlan.Available();
        var memory = MemoryPlan.Predict(m, plan, model, limit, limitSource);
        // Distributed, this process holds a block and solves; the streams and their forwards are the workers'.
        // OAC's backward is theirs too: here a group's fp64 sums (the total and the shard being added, four
        // times its fp32 H̄, within three times a block's fp32 H̄) become its H̄.
        if (options.Cluster is not null && m.Quantize.NeedsCalibration)
            memory = memory with { Streams = 0, Activations = 0, Stages = 0, OutputAdaptive = 3 * memory.OutputAdaptiveHessians };
        Emit(new MemoryEvent(memory));
        memory.Check(m, plan, model);
        NativeHeap.Sizes(memory.BatchActivation, memory.LargestForwardTemporary + (1L << 20));
        NativeHeap.Forward();
        var disk = SpacePlan.Predict(m, plan, model, run.Resumable);
        space.Bytes = disk.Total;
        Emit(new InfoEvent("disk", disk.Summary()));
        // What a resumed run already wrote counts as written.
        DiskSpace.Require(outputDir, disk.Total - FolderBytes(run.Root), $"{m.Output.Name} and its resume files ({disk.Summary()})");
        using var local = q.Imatrix is { } imatrixFile ? new ImatrixHessian(imatrixFile, config, weights) : HessianSources.For(q, staged: memory.Stages > 0);

        // Evaluation before (a resumed run has the figures already).
        var evaluation = new RunEvaluation(m, config, tokenizer, memory.EvaluationBudget, Emit);
        PerplexityResult? before;
        IReadOnlyList<TaskResult> tasksBefore;
        using (PhaseClock.Measure("evaluation"))
        {
            before = state?.Before ?? evaluation.Perplexity(model, "before", ct);
            tasksBefore = state is not null && state.TasksBefore.Count == evaluation.TaskCount ? state.TasksBefore : evaluation.Tasks(model, "before", ct);
        }

        IReadOnlyList<long[]> sequences = [];
        if (local.NeedsCalibration)
        {
            using var phase = PhaseClock.Measure("calibration data");
            var cal = m.Calibration!;
            var set = CalibrationSet.Load(cal.Data, tokenizer, config.VocabSize, cal.Samples, cal.SequenceLength, cal.Seed);
            sequences = set.Sequences;
            Emit(new InfoEvent("calibration", $"{sequences.Count} sequences × {sequences[0].Length} tokens from {Path.GetFileName(cal.Data)} ({set.AvailableTokens:N0} tokens available)"));
        }

        // Calibration, block by block, written as it goes.
        using var writer = PackageWriter.Create(m, plan, model, run.Output, run.Scratch, state?.Writer);
        int first = state?.NextBlock ?? 0;
        if (first > 0) Emit(new InfoEvent("resume", $"resuming after block {first} of {model.BlockCount} ({run.Root})"));
        var storage = m.Calibration?.Bf16Stream == true ? ScalarType.BFloat16 : ScalarType.Float32;
        using var workers = options.Cluster is { } cluster && local.NeedsCalibration
            ? cluster.Start(new ShardJob(m.Path, File.ReadAllText(m.Path), m.ModelPath, ModelDigests(m.ModelPath, options.Digests), EngineVersion,
                Numerics.Key(get_num_threads()), RunKey(fingerprint), ShardPlan.Split(sequences, cluster.Workers)), ct)
            : null;
        using var distributed = workers is null ? null : new DistributedHessian(workers, Path.Combine(run.Root, "shards"), (ISummedHessianSource)local);
        IHessianSource hessians = distributed ?? local;
        ActivationStream? stream = null;
        if (hessians.NeedsCalibration && distributed is null)
        {
            using var phase = PhaseClock.Measure("calibration data");
            stream = first == 0 ? ActivationStream.Embed(model, sequences, storage) : ActivationStream.Load(run.StreamFile(first), "xq", sequences, storage);
            if (first > 0) hessians.Restore(run.StateFolder(first), sequences, first);
        }
        else if (distributed is not null && first > 0) hessians.Restore(run.Root, sequences, first);
        IReadOnlyList<LayerReport> reports;
        using (stream)
        {
            var calibrator = new Calibrator
            {
                Model = model, Plan = plan, Hessians = hessians, Writer = writer, Scratch = run.Scratch, Events = onEvent, Cancellation = ct,
                RtnBaseline = m.Evaluate?.RtnBaseline == true,
                Transform = q.Awq is { } awq ? new AwqTransform(awq) : null,
                Placement = workers is null || options.SolveOnCoordinator ? null : new DistributedSolves(workers),
                Checkpoint = run.Resumable ? new ResumePoint(run, writer, fingerprint, before, tasksBefore) : null,
            };
            reports = calibrator.Run(stream, first, state?.Reports);
        }
        // Tensors outside the blocks (embeddings, final norm, head), as stored.
        using (PhaseClock.Measure("write"))
        {
            foreach (var name in model.OutsideTensorNames())
                writer.AddStored(name, model.Weights);
            writer.FinishTensors(m.ModelPath);
        }

        Action<JsonObject>? patch = rotated is null ? null : rotated.PatchConfig;
        var info = new PackageInfo
        {
            ModelType = config.ModelType,
            SourceModel = Path.GetFileName(m.ModelPath.TrimEnd('/', '\\')),
            Scheme = Scheme(q),
            InputFingerprint = fingerprint,
            Layers = reports,
            SkipReasons = plan.SkipReasons,
            Calibration = m.Calibration is { } c && sequences.Count > 0 ? new CalibrationInfo(Path.GetFileName(c.Data), sequences.Count, sequences[0].Length, c.Seed) : null,
        };
        writer.WriteMetadata(m.ModelPath, info, patch);

        // Evaluation after, from what was written.
        PerplexityResult? after = null;
        List<TaskResult> tasksAfter = [];
        if (evaluation.Any)
        {
            using var phase = PhaseClock.Measure("evaluation");
            using var written = ModelLoader.Open(writer.EvaluationPath);
            after = evaluation.Perplexity(written, "after", ct);
            tasksAfter = evaluation.Tasks(written, "after", ct);
        }
        if (evaluation.Info(before, after, tasksBefore, tasksAfter) is { } measured)
        {
            info = info with { Evaluation = measured };
            writer.WriteMetadata(m.ModelPath, info, patch);
        }
        bool gatePassed = evaluation.GatePassed(before, after);

        ct.ThrowIfCancellationRequested();
        options.BeforePublish?.Invoke(run.Output);
        run.Publish(destination, options.ContentAddressed);
        Emit(new InfoEvent("output", destination));
        double seconds = total.Elapsed.TotalSeconds;
        return new JobResult(destination, seconds, before, after, gatePassed, reports)
        {
            TasksBefore = tasksBefore, TasksAfter = tasksAfter, ResumedBlocks = first, Phases = Phases(clock, seconds),
        };
    }

    static long FolderBytes(string folder) =>
        Directory.Exists(folder) ? Directory.EnumerateFiles(folder, "*", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length) : 0;

    /// <summary>The run folder's key: the fingerprint's first 16 hex digits.</summary>
    public static string RunKey(string fingerprint) => fingerprint[(fingerprint.IndexOf(':') + 1)..][..16];

    /// <summary>Saves a resume point after every block: writer, streams, the Hessian source's state,
    /// then state.json (the commit).</summary>
    sealed class ResumePoint(RunFolder run, PackageWriter writer, string fingerprint, PerplexityResult? before, IReadOnlyList<TaskResult> tasksBefore) : IBlockCheckpoint
    {
        public void Completed(int block, ActivationStream? stream, IHessianSource hessians, IReadOnlyList<LayerReport> reports)
        {
            var writerState = writer.Commit();
            string folder = run.StateFolder(block + 1);
            if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
            Directory.CreateDirectory(folder);
            stream?.Save(run.StreamFile(block + 1), "xq");
            hessians.Save(folder);
            run.SaveState(new RunState
            {
                Fingerprint = fingerprint, NextBlock = block + 1, Writer = writerState, Reports = reports.ToList(),
                Before = before, TasksBefore = tasksBefore.ToList(),
            });
            run.DropStatesBefore(block + 1);
        }
    }

    /// <summary>The scheme part of dotquant.json (also hashed into the fingerprint).</summary>
    public static JsonObject Scheme(QuantizeSpec q) => q.ToJson();

    /// <summary>The files a run reads: model folder (*.json, *.safetensors), calibration data and
    /// evaluation data. The build integration watches exactly these.</summary>
    public static IReadOnlyList<string> InputFiles(QuantManifest m)
    {
        var files = Directory.EnumerateFiles(m.ModelPath)
            .Where(f => f.EndsWith(".safetensors", StringComparison.Ordinal) || f.EndsWith(".json", StringComparison.Ordinal))
            .Order(StringComparer.Ordinal).ToList();
        if (m.Calibration is { } c) files.Add(c.Data);
        if (m.Quantize.Imatrix is { } imatrix) files.Add(imatrix);
        if (m.Evaluate?.Perplexity is { } p) files.Add(p.Data);
        if (m.Evaluate?.Tasks is { } t) files.AddRange(t.Files);
        return files;
    }

    /// <summary>SHA-256 over everything that determines the output: engine version, numerics (kernels and
    /// thread count), scheme, layer rules, output settings, evaluation settings and the content of every
    /// input file.</summary>
    /// <param name="shards">Calibration shards of a distributed run: more than one adds the statistics in
    /// another order (the same output up to rounding, not the same bytes), so it is part of the key.</param>
    public static string Fingerprint(QuantManifest m, FileDigests? digests = null, int shards = 1)
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
        // The kernels' code paths and the thread count decide the last bits (Torch/Numerics).
        AddText(Numerics.Key(get_num_threads()));
        AddText(scheme.ToJsonString());
        foreach (var r in m.Quantize.Layers) AddText($"{r.Match}|{r.Bits}|{r.GroupSize}|{r.Skip}");
        AddText($"{m.Output.Name}|{m.Output.Format}");
        if (m.Calibration is { } c) AddText($"{c.Samples}|{c.SequenceLength}|{c.Seed}" + (c.Bf16Stream ? "|bf16" : ""));
        if (m.Output.ShardBytes != OutputSpec.DefaultShardBytes) AddText($"shard|{m.Output.ShardBytes}");
        if (m.Output.Format == OutputFormat.Onnx) AddText($"onnx|{m.Output.OnnxHead}|{m.Output.OnnxAccuracyLevel}");
        if (m.Evaluate?.Perplexity is { } p) AddText($"{p.SequenceLength}|{p.MaxSequences}");
        if (m.Evaluate?.Tasks is { } t) AddText($"tasks|{t.Limit}|{t.Files.Count}");
        if (m.Evaluate?.RtnBaseline == true) AddText("rtn-baseline");
        if (shards > 1 && m.Quantize.NeedsCalibration) AddText($"shards|{shards}");
        foreach (var f in InputFiles(m)) AddFile(f);
        return "sha256:" + Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    /// <summary>SHA-256 of each file of the model folder that a run reads (a worker's copy must match).</summary>
    public static IReadOnlyDictionary<string, string> ModelDigests(string modelPath, FileDigests? digests = null)
    {
        digests ??= new FileDigests(null);
        return Directory.EnumerateFiles(modelPath)
            .Where(f => f.EndsWith(".safetensors", StringComparison.Ordinal) || f.EndsWith(".json", StringComparison.Ordinal))
            .Order(StringComparer.Ordinal)
            .ToDictionary(f => Path.GetFileName(f), digests.Of, StringComparer.Ordinal);
    }
}
