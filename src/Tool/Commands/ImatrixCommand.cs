using System.CommandLine;
using System.Diagnostics;
using System.Text.Json.Nodes;
using DotQuant.Runtime;
using DotQuant.Engine.Gguf;
using DotQuant.Engine.Imatrix;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;

namespace DotQuant.Tool.Commands;

/// <summary><c>dotnet-quantize imatrix MODEL --data FILE -o OUT [--ctx-size N] [--chunks N] [--parse-special]</c>: llama.cpp's
/// importance matrix from our forward passes, as llama-imatrix computes it (same chunks, same statistics,
/// its GGUF imatrix or, for OUT ending in .dat, its legacy file), for llama-quantize --imatrix or for
/// <c>quantize: { method: rtn, hessian: imatrix, imatrix: OUT }</c>.</summary>
public static class ImatrixCommand
{
    public static Command Create(TextWriter stdout)
    {
        var model = new Argument<string>("MODEL") { Description = "a Hugging Face model folder (or anything `eval` reads)" };
        var data = new Option<string>("--data", "-f") { Description = "UTF-8 text, tokenized whole as llama-imatrix does", Required = true };
        var output = new Option<string>("--output", "-o") { Description = "the imatrix file: GGUF (llama.cpp's current format) or, ending in .dat, the legacy format", Required = true };
        var ctx = new Option<int>("--ctx-size", "-c") { Description = "tokens per chunk (llama-imatrix -c)", DefaultValueFactory = _ => 512 };
        var chunks = new Option<int>("--chunks") { Description = "use at most this many chunks (default: all the text gives)", DefaultValueFactory = _ => -1 };
        var processOutput = new Option<bool>("--process-output") { Description = "also collect output.weight's input (llama-imatrix --process-output)" };
        var parseSpecial = new Option<bool>("--parse-special") { Description = "match special tokens written in the text (<unk>, <s>, ...); by default they are text, as llama-imatrix does" };
        var format = OutputFormat.Create();
        var cmd = new Command("imatrix", "Compute llama.cpp's importance matrix (llama-imatrix's statistics) from a text file")
        {
            model, data, output, ctx, chunks, processOutput, parseSpecial, format,
        };
        cmd.SetAction(parse =>
        {
            string dir = parse.GetValue(model)!, dataPath = parse.GetValue(data)!, outPath = parse.GetValue(output)!;
            if (!File.Exists(dataPath)) throw new DotQuantException(ErrorCodes.FileNotFound, $"data file not found: {dataPath}", dataPath);
            string? outDir = Path.GetDirectoryName(Path.GetFullPath(outPath));
            if (outDir is null || !Directory.Exists(outDir)) throw new DotQuantException(ErrorCodes.FileNotFound, $"the output's folder does not exist: {outDir}", outPath);
            var clock = Stopwatch.StartNew();
            using var m = ModelLoader.Open(dir);
            string tokenizerDir = ModelLoader.TokenizerFolder(dir);
            var tokenizer = HfTokenizer.Load(tokenizerDir);
            // llama.cpp adds BOS when the vocabulary says so; SentencePiece vocabularies do by default, byte-level ones do not.
            var vocab = GgufVocab.Load(tokenizerDir, m.Config.VocabSize);
            bool addBos = (vocab.AddBos ?? vocab.Model == "llama") && tokenizer.BosTokenId is not null;
            var ids = tokenizer.Encode(File.ReadAllText(dataPath), addBos, parseSpecial: parse.GetValue(parseSpecial));
            var windows = ImatrixCollector.Chunks(ids, parse.GetValue(ctx), parse.GetValue(chunks), addBos ? tokenizer.BosTokenId : null);
            bool json = parse.GetValue(format) == "json";
            if (!json) stdout.WriteLine($"{ids.Length:N0} tokens; {windows.Count} chunks of {parse.GetValue(ctx)}");
            var matrix = ImatrixCollector.Collect(m, windows, parse.GetValue(ctx), [dataPath], parse.GetValue(processOutput),
                (b, n) => { if (!json) stdout.WriteLine($"block {b}/{n}"); });
            matrix.Write(outPath);
            double seconds = clock.Elapsed.TotalSeconds;
            if (json)
                OutputFormat.WriteJson(stdout, new JsonObject
                {
                    ["output"] = Path.GetFullPath(outPath), ["entries"] = matrix.Entries.Count, ["chunks"] = windows.Count,
                    ["chunk_size"] = parse.GetValue(ctx), ["tokens"] = ids.Length, ["seconds"] = seconds,
                });
            else stdout.WriteLine($"wrote {outPath}: {matrix.Entries.Count} entries from {windows.Count} chunks in {seconds:F1} s");
            return ExitCodes.Ok;
        });
        return cmd;
    }
}
