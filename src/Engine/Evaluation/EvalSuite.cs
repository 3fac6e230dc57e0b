using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;

namespace DotQuant.Engine.Evaluation;

/// <summary>What to measure on a model: perplexity on a text (GPTQ windows) and zero-shot tasks.</summary>
public sealed record EvalPlan(string? Data, int SequenceLength, int? MaxWindows, IReadOnlyList<string> Tasks, string? TasksDir, int? Limit, bool Bos = false);

/// <summary>One model's measurements.</summary>
public sealed record EvalSummary(PerplexityResult? Perplexity, IReadOnlyList<TaskResult> Tasks);

/// <summary>"What did quantization cost?" — the same plan run on each model.</summary>
public static class EvalSuite
{
    /// <summary>Loads the tasks once (they are checked before any model is run).</summary>
    public static IReadOnlyList<ZeroShotTask> LoadTasks(EvalPlan plan) =>
        plan.Tasks.Select(t => ZeroShotTask.Load(t, plan.TasksDir, plan.Limit)).ToList();

    public static EvalSummary Run(DecoderModel model, HfTokenizer tokenizer, EvalPlan plan, IReadOnlyList<ZeroShotTask> tasks, string? text = null, Action<string>? progress = null)
    {
        PerplexityResult? ppl = null;
        if (plan.Data is not null)
        {
            text ??= File.ReadAllText(plan.Data);
            ppl = Perplexity.Windows(model, tokenizer.Encode(text), plan.SequenceLength, plan.MaxWindows);
            progress?.Invoke($"perplexity {ppl.Perplexity:F4}");
        }
        var results = new List<TaskResult>();
        foreach (var t in tasks)
        {
            var r = ZeroShot.Evaluate(model, tokenizer, t, plan.Bos);
            progress?.Invoke($"{t.Name}: acc {r.Acc:F4}{(r.AccNorm is double n ? $", acc_norm {n:F4}" : "")} ({r.Documents} documents, {r.Seconds:F1} s)");
            results.Add(r);
        }
        return new EvalSummary(ppl, results);
    }
}
