using DotQuant.Runtime;
using DotQuant.Engine.Evaluation;
using DotQuant.Engine.Formats;
using DotQuant.Engine.IO;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;

namespace DotQuant.Engine.Calibration;

/// <summary>What a manifest's <c>evaluate:</c> section measures, before quantization on the float
/// model and after on the package as written: perplexity (GPTQ windows) and zero-shot tasks, layer-major
/// within the memory plan's activation budget, each result reported as an event.</summary>
public sealed class RunEvaluation
{
    readonly EvaluateSpec? _spec;
    readonly HfTokenizer _tokenizer;
    readonly int[]? _ids;
    readonly int _length;
    readonly IReadOnlyList<ZeroShotTask> _tasks;
    readonly long _budget;
    readonly Action<RunEvent> _emit;

    public RunEvaluation(QuantManifest m, ModelConfig config, HfTokenizer tokenizer, long activationBudget, Action<RunEvent> emit)
    {
        _spec = m.Evaluate;
        _tokenizer = tokenizer;
        _budget = activationBudget;
        _emit = emit;
        if (_spec?.Perplexity is { } ppl)
        {
            if (!File.Exists(ppl.Data)) throw new DotQuantException(ErrorCodes.EvalData, $"evaluation data not found: {ppl.Data}", m.Path);
            _ids = tokenizer.Encode(File.ReadAllText(ppl.Data));
            // Tokenizing the whole text leaves tens of MB of strings and pieces behind; collected now
            // (and the heap compacted), they are not garbage beside the evaluation's forward passes.
            GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
            _length = ppl.SequenceLength ?? Math.Min(2048, config.MaxPositionEmbeddings);
        }
        _tasks = _spec?.Tasks is { } ts ? ts.Files.Select(f => ZeroShotTask.Load(f, null, ts.Limit)).ToList() : [];
    }

    public bool Any => _ids is not null || _tasks.Count > 0;
    public int TaskCount => _tasks.Count;

    public PerplexityResult? Perplexity(DecoderModel model, string when, CancellationToken ct)
    {
        if (_ids is null) return null;
        _emit(new InfoEvent("evaluate", $"perplexity {when} quantization"));
        var r = Evaluation.Perplexity.Windows(model, _ids, _length, _spec!.Perplexity!.MaxSequences, activationBudget: _budget, ct: ct);
        _emit(new PerplexityEvent(when, r));
        return r;
    }

    public List<TaskResult> Tasks(DecoderModel model, string when, CancellationToken ct) => _tasks.Select(t =>
    {
        _emit(new InfoEvent("evaluate", $"{t.Name} {when} quantization"));
        var r = ZeroShot.Evaluate(model, _tokenizer, t, activationBudget: _budget, ct: ct);
        _emit(new TaskEvent(when, r));
        return r;
    }).ToList();

    /// <summary>The package's record of the measurements (null without both perplexities).</summary>
    public EvaluationInfo? Info(PerplexityResult? before, PerplexityResult? after, IReadOnlyList<TaskResult> tasksBefore, IReadOnlyList<TaskResult> tasksAfter) =>
        before is null || after is null ? null
        : new EvaluationInfo(Path.GetFileName(_spec!.Perplexity!.Data), after.Windows, _spec.Perplexity.SequenceLength, before.Perplexity, after.Perplexity)
        {
            Tasks = tasksBefore.Zip(tasksAfter).ToList(),
        };

    /// <summary>The manifest's gate on these measurements (passes when there is no gate).</summary>
    public bool GatePassed(PerplexityResult? before, PerplexityResult? after) =>
        _spec?.Gate is not { } gate || before is null || after is null || gate.Judge(before.Perplexity, after.Perplexity);
}
