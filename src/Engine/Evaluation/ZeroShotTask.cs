using System.Text.Json;
using DotQuant.Runtime;

namespace DotQuant.Engine.Evaluation;

/// <summary>How a task's documents are scored.</summary>
public enum TaskKind
{
    /// <summary>{query, choices[], gold}: log-likelihood of " " + choice after the query (PIQA, ARC, BoolQ,
    /// COPA, OpenBookQA, HellaSwag); acc and length-normalised acc_norm.</summary>
    MultipleChoice,
    /// <summary>{context_options[], continuation, gold}: log-likelihood of " " + continuation after each
    /// context (WinoGrande's partial scoring); acc.</summary>
    PartialContext,
    /// <summary>{context, continuation}: whether greedy decoding reproduces " " + continuation
    /// (LAMBADA's last word); acc and the continuation's perplexity.</summary>
    LanguageModel,
}

/// <summary>One scored document: a shared context or one per option, the continuations, the gold index.</summary>
public sealed record TaskDocument(IReadOnlyList<string> Contexts, IReadOnlyList<string> Continuations, int Gold, IReadOnlyList<string> Choices);

/// <summary>A zero-shot task loaded from llm-foundry's JSONL formats (the files of
/// ../shared/data/zeroshot) or llama.cpp's HellaSwag text format (6 lines per task: context, gold
/// label, four endings).</summary>
public sealed class ZeroShotTask
{
    public required string Name { get; init; }
    public required TaskKind Kind { get; init; }
    public required IReadOnlyList<TaskDocument> Documents { get; init; }

    /// <summary>Between a context and its continuation, as lm-evaluation-harness's default target delimiter.</summary>
    public const string Delimiter = " ";

    public static readonly string[] KnownTasks = ["piqa", "arc_easy", "arc_challenge", "boolq", "winogrande", "copa", "openbook_qa", "hellaswag", "lambada_openai"];

    /// <summary>The file of a task given by path (<paramref name="asPath"/>, else the name itself), or by
    /// name as NAME.jsonl or NAME.txt in <paramref name="dir"/> (the current folder when null); null when
    /// none exists. The CLI and quant.yaml resolve tasks through this one rule.</summary>
    public static string? Find(string nameOrPath, string? dir, out IReadOnlyList<string> lookedAt, string? asPath = null)
    {
        var candidates = new List<string> { asPath ?? nameOrPath };
        candidates.AddRange(new[] { ".jsonl", ".txt" }.Select(e => Path.Combine(dir ?? ".", nameOrPath + e)));
        lookedAt = candidates;
        return candidates.FirstOrDefault(File.Exists);
    }

    /// <summary>A task given by name (found as NAME.jsonl or NAME.txt in <paramref name="dir"/>) or by path.</summary>
    public static ZeroShotTask Load(string nameOrPath, string? dir, int? limit = null)
    {
        string path = Find(nameOrPath, dir, out var lookedAt)
            ?? throw new DotQuantException(ErrorCodes.EvalData,
                $"task '{nameOrPath}' not found (looked for {string.Join(" and ", lookedAt.Skip(1))}; pass --tasks-dir or a path)", nameOrPath);
        string name = Path.GetFileNameWithoutExtension(path);
        return path.EndsWith(".txt", StringComparison.OrdinalIgnoreCase) ? LoadHellaSwagText(path, name, limit) : LoadJsonl(path, name, limit);
    }

    static ZeroShotTask LoadJsonl(string path, string name, int? limit)
    {
        var docs = new List<TaskDocument>();
        TaskKind? kind = null;
        int lineNo = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            if (limit is int l && docs.Count >= l) break;
            JsonElement e;
            try
            {
                e = JsonDocument.Parse(line).RootElement;
            }
            catch (JsonException ex)
            {
                throw new DotQuantException(ErrorCodes.EvalData, $"line {lineNo} is not JSON: {ex.Message}", path, line: lineNo, column: 1);
            }
            DotQuantException Bad(string why) => new(ErrorCodes.EvalData, $"line {lineNo}: {why}", path, line: lineNo, column: 1);
            string Str(string key) => e.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()! : throw Bad($"'{key}' must be a string");
            List<string> Strs(string key) => e.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.Array && v.GetArrayLength() >= 2
                ? v.EnumerateArray().Select(x => x.ValueKind == JsonValueKind.String ? x.GetString()! : throw Bad($"'{key}' must hold strings")).ToList()
                : throw Bad($"'{key}' must be an array of at least two strings");
            int Gold(int count) => e.TryGetProperty("gold", out var g) && g.ValueKind == JsonValueKind.Number && g.TryGetInt32(out int i) && i >= 0 && i < count
                ? i : throw Bad($"'gold' must be an index into the {count} options");

            TaskKind k = e.TryGetProperty("choices", out _) ? TaskKind.MultipleChoice
                : e.TryGetProperty("context_options", out _) ? TaskKind.PartialContext
                : e.TryGetProperty("context", out _) ? TaskKind.LanguageModel
                : throw Bad("expected {query, choices, gold}, {context_options, continuation, gold} or {context, continuation}");
            if (kind is not null && kind != k) throw Bad($"mixes formats ({kind} before)");
            kind = k;
            docs.Add(k switch
            {
                TaskKind.MultipleChoice => MultipleChoice(Str("query"), Strs("choices")),
                TaskKind.PartialContext => PartialContext(Strs("context_options"), Str("continuation")),
                _ => new TaskDocument([Str("context")], [Delimiter + Str("continuation")], 0, [Str("continuation")]),
            });

            TaskDocument MultipleChoice(string query, List<string> choices) =>
                new([query], choices.Select(c => Delimiter + c).ToList(), Gold(choices.Count), choices);
            TaskDocument PartialContext(List<string> contexts, string continuation) =>
                new(contexts, [Delimiter + continuation], Gold(contexts.Count), contexts);
        }
        if (docs.Count == 0) throw new DotQuantException(ErrorCodes.EvalData, "the task file has no documents", path);
        return new ZeroShotTask { Name = name, Kind = kind!.Value, Documents = docs };
    }

    /// <summary>llama.cpp's hellaswag_val_full.txt: per task a context line, the gold label (0–3) and four endings.</summary>
    static ZeroShotTask LoadHellaSwagText(string path, string name, int? limit)
    {
        var lines = File.ReadAllLines(path);
        if (lines.Length == 0 || lines.Length % 6 != 0)
            throw new DotQuantException(ErrorCodes.EvalData, $"expected 6 lines per task (context, label, 4 endings), got {lines.Length} lines", path);
        var docs = new List<TaskDocument>();
        for (int i = 0; i < lines.Length && (limit is not int l || docs.Count < l); i += 6)
        {
            if (!int.TryParse(lines[i + 1].Trim(), out int gold) || gold is < 0 or > 3)
                throw new DotQuantException(ErrorCodes.EvalData, $"line {i + 2}: the gold label must be 0–3", path, line: i + 2, column: 1);
            var endings = lines.Skip(i + 2).Take(4).ToList();
            docs.Add(new TaskDocument([lines[i]], endings.Select(c => Delimiter + c).ToList(), gold, endings));
        }
        return new ZeroShotTask { Name = name, Kind = TaskKind.MultipleChoice, Documents = docs };
    }
}
