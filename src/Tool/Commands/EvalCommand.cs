using System.CommandLine;
using System.Text.Json.Nodes;
using DotQuant.Engine.Diagnostics;
using DotQuant.Engine.Evaluation;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;

namespace DotQuant.Tool.Commands;

/// <summary><c>dotnet-quantize eval MODEL_DIR --data FILE</c>: perplexity of a model on a text.</summary>
public static class EvalCommand
{
    public static Command Create(TextWriter stdout)
    {
        var model = new Argument<string>("MODEL_DIR") { Description = "Hugging Face model folder (config.json, tokenizer.json, *.safetensors)" };
        var data = new Option<string>("--data") { Description = "UTF-8 text file to evaluate on", Required = true };
        var seqLen = new Option<int?>("--sequence-length") { Description = "window length (default: min(2048, max_position_embeddings))" };
        var maxWindows = new Option<int?>("--max-windows") { Description = "evaluate only the first N windows" };
        var separator = new Option<string?>("--document-separator") { Description = "score each document on its own (split on this text, trimmed), truncated at the sequence length" };
        var bos = new Option<bool>("--bos") { Description = "prepend BOS to each document (with --document-separator)" };
        var format = OutputFormat.Create();

        var cmd = new Command("eval", "Perplexity of a model (GPTQ protocol: non-overlapping windows, no BOS)")
        {
            model, data, seqLen, maxWindows, separator, bos, format,
        };
        cmd.SetAction(parse =>
        {
            string dir = parse.GetValue(model)!;
            string dataPath = parse.GetValue(data)!;
            var text = ReadText(dataPath);
            var config = ModelConfig.Load(dir);
            var tokenizer = HfTokenizer.Load(dir);
            int length = parse.GetValue(seqLen) ?? Math.Min(2048, config.MaxPositionEmbeddings);
            int? cap = parse.GetValue(maxWindows);
            if (cap is <= 0) throw new DotQuantException(ErrorCodes.EvalArgument, "--max-windows must be positive");
            if (length < 2) throw new DotQuantException(ErrorCodes.EvalArgument, "--sequence-length must be at least 2");

            using var m = ModelLoader.Load(dir);
            string? sep = parse.GetValue(separator);
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
                    .Select(d => tokenizer.Encode(d, parse.GetValue(bos)))
                    .ToList();
                r = Perplexity.Documents(m, docs, length);
                protocol = "documents";
            }

            if (parse.GetValue(format) == "json")
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
        });
        return cmd;
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
