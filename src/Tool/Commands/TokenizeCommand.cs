using System.CommandLine;
using System.Text.Json.Nodes;
using DotQuant.Runtime;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;

namespace DotQuant.Tool.Commands;

/// <summary><c>dotnet-quantize tokenize MODEL_DIR (--text T | --data FILE) [--bos]</c>: the token ids our
/// tokenizer gives, as llama-tokenize prints them, to debug calibration data and chat templates. The
/// folder may hold only the tokenizer files (or a GGUF with tokenizer.json beside it).</summary>
public static class TokenizeCommand
{
    public static Command Create(TextWriter stdout)
    {
        var dir = new Argument<string>("MODEL_DIR") { Description = "a folder with tokenizer.json (a model folder, a GGUF output, or the tokenizer files alone)" };
        var text = new Option<string?>("--text") { Description = "the text to tokenize" };
        var data = new Option<string?>("--data") { Description = "a UTF-8 file to tokenize (as a whole)" };
        var bos = new Option<bool>("--bos") { Description = "prepend the tokenizer's BOS token" };
        var format = new Option<string>("--format")
        {
            Description = "ids (space-separated on one line, default), text (each token with its id) or json",
            DefaultValueFactory = _ => "ids",
        }.AcceptOnlyFromAmong("ids", "text", "json");
        var cmd = new Command("tokenize", "Print the token ids of a text as the model's tokenizer gives them") { dir, text, data, bos, format };
        cmd.SetAction(parse =>
        {
            string? t = parse.GetValue(text), file = parse.GetValue(data);
            if ((t is null) == (file is null))
                throw new DotQuantException(ErrorCodes.Usage, "give exactly one of --text and --data");
            if (file is not null && !File.Exists(file))
                throw new DotQuantException(ErrorCodes.FileNotFound, $"data file not found: {file}", file);
            string folder = parse.GetValue(dir)!;
            if (!Directory.Exists(folder) && !File.Exists(folder))
                throw new DotQuantException(ErrorCodes.FileNotFound, $"model folder not found: {folder}", folder);
            var tokenizer = HfTokenizer.Load(ModelLoader.TokenizerFolder(folder));
            string input = t ?? File.ReadAllText(file!);
            var ids = tokenizer.Encode(input, addBos: parse.GetValue(bos));
            switch (parse.GetValue(format))
            {
                case "text":
                    foreach (int id in ids) stdout.WriteLine($"{id,8} -> '{tokenizer.Piece(id)}'");
                    break;
                case "json":
                    OutputFormat.WriteJson(stdout, new JsonObject
                    {
                        ["ids"] = new JsonArray(ids.Select(i => (JsonNode)i).ToArray()),
                        ["pieces"] = new JsonArray(ids.Select(i => (JsonNode?)tokenizer.Piece(i)).ToArray()),
                        ["count"] = ids.Length,
                    });
                    break;
                default:
                    stdout.WriteLine(string.Join(' ', ids));
                    break;
            }
            return ExitCodes.Ok;
        });
        return cmd;
    }
}
