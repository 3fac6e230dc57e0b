using DotQuant.Engine.Evaluation;

namespace DotQuant.Engine.Calibration;

/// <summary>Something a run reports as it goes. <see cref="Kind"/> is the JSON event name the CLI
/// writes and the build task reads; only <see cref="WarningEvent"/> is a warning (DQ0180 in a build).</summary>
public abstract record RunEvent(string Kind, string Message);

/// <summary>A linear was solved (the per-layer line, with its loss and bits).</summary>
public sealed record LayerEvent(LayerReport Layer, int Done, int Total) : RunEvent("layer", Layer.Name);

/// <summary>Timing of a step inside a block (e.g. the output-adaptive Hessians of a block).</summary>
public sealed record ProgressEvent(string Text, int Block, double Seconds) : RunEvent("progress", Text);

/// <summary>A block is solved, written and checkpointed.</summary>
public sealed record BlockEvent(int Block, int Blocks, double Seconds) : RunEvent("block", $"block {Block + 1}/{Blocks} done in {Seconds:F1} s");

/// <summary>A phase starts or a fact about the run (calibration set, rotation, resume, output).</summary>
public sealed record InfoEvent(string What, string Text) : RunEvent(What, Text);

public sealed record WarningEvent(string Text) : RunEvent("warning", Text);

public sealed record PerplexityEvent(string When, PerplexityResult Result) : RunEvent("perplexity", $"{When}: {Result.Perplexity:F4}");

public sealed record TaskEvent(string When, TaskResult Result) : RunEvent("task", $"{Result.Task} {When}: acc {Result.Acc:F4}");

/// <summary>The memory plan, printed before any work.</summary>
public sealed record MemoryEvent(MemoryPlan Plan) : RunEvent("memory", Plan.Summary());
