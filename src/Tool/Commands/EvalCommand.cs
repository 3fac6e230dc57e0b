using System.CommandLine;
using System.Text.Json.Nodes;
using DotQuant.Runtime;
using DotQuant.Engine.Evaluation;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;

namespace DotQuant.Tool.Commands;

/// <summary><c>dotnet-quantize eval MODEL [MODEL ...] [--data FILE] [--tasks piqa,arc_easy,...]</c>:
/// perplexity and zero-shot accuracy of one model, or a comparison table of several (deltas against
/// the first).</summary>
public static class EvalCommand
{
    public static Command Create(TextWriter stdout)
    {
        var models = new Argument<string[]>("MODEL_DIR") { Description = "Hugging Face model folders (float, DotQuant or GPTQ) or GGUF files (tokenizer.json beside them); with several, a comparison table against the first", Arity = ArgumentArity.OneOrMore };
        var data = new Option<string?>("--data") { Description = "UTF-8 text file for perplexity" };
        var seqLen = new Option<int?>("--sequence-length") { Description = "window length (default: min(2048, max_position_embeddings))" };
        var maxWindows = new Option<int?>("--max-windows") { Description = "evaluate only the first N windows (or documents)" };
        var separator = new Option<string?>("--document-separator") { Description = "score each document on its own (split on this text, trimmed), truncated at the sequence length" };
        var bos = new Option<bool>("--bos") { Description = "prepend BOS to each document (with --document-separator) and to task contexts" };
        var tasks = new Option<string?>("--tasks") { Description = $"zero-shot tasks, comma-separated names ({string.Join(", ", ZeroShotTask.KnownTasks)}) found in --tasks-dir, or paths to .jsonl / llama.cpp hellaswag .txt files" };
        var tasksDir = new Option<string?>("--tasks-dir") { Description = "folder with NAME.jsonl task files (default: the current folder)" };
        var limit = new Option<int?>("--limit") { Description = "score only the first N documents of each task" };
        var format = OutputFormat.Create();

        var cmd = new Command("eval", "Perplexity (GPTQ protocol: non-overlapping windows, no BOS) and zero-shot accuracy (lm-evaluation-harness scoring)")
        {
            models, data, seqLen, maxWindows, separator, bos, tasks, tasksDir, limit, format,
        };
        cmd.SetAction(parse =>
        {
            var dirs = parse.GetValue(models)!;
            // With one-or-more model arguments, an unknown option would be taken for a model folder.
            if (dirs.FirstOrDefault(d => d.StartsWith('-')) is { } unknown)
                throw new DotQuantException(ErrorCodes.Usage, $"unrecognized option '{unknown}' (see --help)");
            string? dataPath = parse.GetValue(data);
            var taskNames = (parse.GetValue(tasks) ?? "").Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
            if (dataPath is null && taskNames.Length == 0)
                throw new DotQuantException(ErrorCodes.EvalArgument, "nothing to evaluate: give --data FILE (perplexity) and/or --tasks NAMES (zero-shot)");
            int? cap = parse.GetValue(maxWindows);
            if (cap is <= 0) throw new DotQuantException(ErrorCodes.EvalArgument, "--max-windows must be positive");
            if (parse.GetValue(limit) is <= 0) throw new DotQuantException(ErrorCodes.EvalArgument, "--limit must be positive");
            string? text = dataPath is null ? null : ReadText(dataPath);
            bool json = parse.GetValue(format) == "json";

            // One model, perplexity only: the original single-model output.
            if (dirs.Length == 1 && taskNames.Length == 0)
                return Single(stdout, dirs[0], dataPath!, text!, parse.GetValue(seqLen), cap, parse.GetValue(separator), parse.GetValue(bos), json);
            if (parse.GetValue(separator) is not null)
                throw new DotQuantException(ErrorCodes.EvalArgument, "--document-separator works for a single model without --tasks");

            var first = ModelLoader.LoadConfig(dirs[0]);
            var plan = new EvalPlan(dataPath, parse.GetValue(seqLen) ?? Math.Min(2048, first.MaxPositionEmbeddings), cap, taskNames,
                parse.GetValue(tasksDir), parse.GetValue(limit), parse.GetValue(bos));
            var loaded = EvalSuite.LoadTasks(plan);
            var summaries = new List<EvalSummary>();
            foreach (var dir in dirs)
            {
                var tokenizer = HfTokenizer.Load(ModelLoader.TokenizerFolder(dir));
                using var m = ModelLoader.Open(dir);
                if (!json) stdout.WriteLine($"{dir}:");
                summaries.Add(EvalSuite.Run(m, tokenizer, plan, loaded, text, json ? null : s => stdout.WriteLine("  " + s)));
            }
            var table = Comparison.Build(dirs, summaries, dataPath is null ? null : Path.GetFileName(dataPath));
            if (json) OutputFormat.WriteJson(stdout, table.ToJson());
            else
            {
                stdout.WriteLine();
                stdout.Write(table.ToMarkdown());
            }
            return ExitCodes.Ok;
        });
        return cmd;
    }

    static int Single(TextWriter stdout, string dir, string dataPath, string text, int? seq, int? cap, string? sep, bool bos, bool json)
    {
        var config = ModelLoader.LoadConfig(dir);
        var tokenizer = HfTokenizer.Load(ModelLoader.TokenizerFolder(dir));
        int length = seq ?? Math.Min(2048, config.MaxPositionEmbeddings);
        if (length < 2) throw new DotQuantException(ErrorCodes.EvalArgument, "--sequence-length must be at least 2");
        using var m = ModelLoader.Open(dir);
        PerplexityResult r;
        string protocol;
        if (sep is null)
        {
            r = Perplexity.Windows(m, tokenizer.Encode(text), length, cap);
            protocol = "windows";
        }
        else
        {
            var docs = text.Split(sep, StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
                .Take(cap ?? int.MaxValue)
                .Select(d => tokenizer.Encode(d, bos))
                .ToList();
            r = Perplexity.Documents(m, docs, length);
            protocol = "documents";
        }

        if (json)
        {
            OutputFormat.WriteJson(stdout, new JsonObject
            {
                ["perplexity"] = r.Perplexity,
                ["mean_nll"] = r.MeanNll,
                ["tokens"] = r.Tokens,
                ["windows"] = r.Windows,
                ["predicted_tokens"] = r.PredictedTokens,
                ["sequence_length"] = length,
                ["protocol"] = protocol,
                ["seconds"] = Math.Round(r.Seconds, 3),
                ["tokens_per_second"] = Math.Round(r.TokensPerSecond, 1),
                ["model"] = Path.GetFullPath(dir),
                ["data"] = Path.GetFullPath(dataPath),
            });
        }
        else
        {
            stdout.WriteLine($"perplexity {r.Perplexity:F4}  (mean NLL {r.MeanNll:F4})");
            stdout.WriteLine($"{r.PredictedTokens:N0} predicted tokens in {r.Windows:N0} {(protocol == "windows" ? $"windows of {length}" : "documents")} ({r.Tokens:N0} tokens), {r.Seconds:F1} s, {r.TokensPerSecond:N0} tokens/s");
        }
        return ExitCodes.Ok;
    }

    static string ReadText(string path)
    {
        if (!File.Exists(path))
            throw new DotQuantException(ErrorCodes.EvalData, $"data file not found: {path}", path);
        string text = File.ReadAllText(path);
        if (text.Length == 0)
            throw new DotQuantException(ErrorCodes.EvalData, "data file is empty", path);
        return text;
    }
}
