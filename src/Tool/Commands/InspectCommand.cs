using DotQuant.Engine.Models;
using DotQuant.Engine.Gguf;
using System.CommandLine;
using System.Text.Json.Nodes;
using DotQuant.Engine.IO;

namespace DotQuant.Tool.Commands;

/// <summary><c>dotnet-quantize inspect PATH</c>: the tensors of a model folder or a .safetensors file.</summary>
public static class InspectCommand
{
    public static Command Create(TextWriter stdout)
    {
        var path = new Argument<string>("PATH") { Description = "a model folder or a .safetensors file" };
        var format = OutputFormat.Create();
        var cmd = new Command("inspect", "List tensors, dtypes, shapes, parameter count and bytes") { path, format };
        cmd.SetAction(parse =>
        {
            string p = parse.GetValue(path)!;
            if (ModelLoader.GgufPath(p) is { } gguf) return InspectGguf(stdout, gguf, parse.GetValue(format) == "json");
            using var ckpt = Checkpoint.Open(p);
            var tensors = ckpt.Tensors.OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
            long parameters = tensors.Sum(t => t.ElementCount);
            long bytes = tensors.Sum(t => t.Length);
            ModelConfig? config = Directory.Exists(p) && File.Exists(Path.Combine(p, "config.json")) ? ModelConfig.Load(p) : null;

            if (parse.GetValue(format) == "json")
            {
                var list = new JsonArray();
                foreach (var t in tensors)
                    list.Add(new JsonObject
                    {
                        ["name"] = t.Name,
                        ["dtype"] = t.DType.ToString(),
                        ["shape"] = new JsonArray(t.Shape.Select(d => (JsonNode)d).ToArray()),
                        ["bytes"] = t.Length,
                    });
                var obj = new JsonObject
                {
                    ["path"] = Path.GetFullPath(p),
                    ["files"] = ckpt.Files.Count,
                    ["tensors"] = list,
                    ["tensor_count"] = tensors.Count,
                    ["parameters"] = parameters,
                    ["bytes"] = bytes,
                };
                if (config is not null)
                {
                    obj["model_type"] = config.ModelType;
                    obj["layers"] = config.NumLayers;
                    obj["hidden_size"] = config.HiddenSize;
                }
                OutputFormat.WriteJson(stdout, obj);
                return ExitCodes.Ok;
            }

            if (config is not null)
                stdout.WriteLine($"{config.ModelType}: {config.NumLayers} layers, hidden {config.HiddenSize}, intermediate {config.IntermediateSize}, " +
                                 $"heads {config.NumHeads}/{config.NumKvHeads} kv, head_dim {config.HeadDim}, vocab {config.VocabSize}, " +
                                 $"{(config.TieWordEmbeddings ? "tied" : "separate")} lm_head");
            int width = Math.Max(4, tensors.Count == 0 ? 4 : tensors.Max(t => t.Name.Length));
            foreach (var t in tensors)
                stdout.WriteLine($"{t.Name.PadRight(width)}  {t.DType,-4}  [{string.Join(", ", t.Shape)}]  {t.Length:N0} B");
            stdout.WriteLine($"{tensors.Count} tensors in {ckpt.Files.Count} file(s), {parameters:N0} parameters, {bytes:N0} bytes");
            return ExitCodes.Ok;
        });
        return cmd;
    
    /// <summary>A GGUF file: its metadata (arrays summarized) and tensors with their ggml types.</summary>
    static int InspectGguf(TextWriter stdout, string path, bool json)
    {
        using var f = GgufFile.Open(path);
        long parameters = f.Tensors.Sum(t => t.ElementCount), bytes = f.Tensors.Sum(t => t.Bytes);
        double bpw = parameters == 0 ? 0 : bytes * 8.0 / parameters;
        if (json)
        {
            var meta = new JsonObject();
            foreach (var (k, v) in f.Metadata)
                meta[k] = v.Value is Array a ? (JsonNode)new JsonObject { ["type"] = v.ElementType.ToString(), ["length"] = a.Length } : JsonValue.Create(v.Value.ToString());
            var list = new JsonArray();
            foreach (var t in f.Tensors)
                list.Add(new JsonObject
                {
                    ["name"] = t.Name,
                    ["type"] = t.Type.ToString(),
                    ["shape"] = new JsonArray(t.Shape.Select(d => (JsonNode)d).ToArray()),
                    ["bytes"] = t.Bytes,
                });
            OutputFormat.WriteJson(stdout, new JsonObject
            {
                ["path"] = Path.GetFullPath(path), ["format"] = "gguf", ["version"] = f.Version,
                ["metadata"] = meta, ["tensors"] = list, ["tensor_count"] = f.Tensors.Count,
                ["parameters"] = parameters, ["bytes"] = bytes, ["bits_per_weight"] = Math.Round(bpw, 4),
            });
            return ExitCodes.Ok;
        }
        stdout.WriteLine($"GGUF v{f.Version}, {f.Metadata.Count} metadata keys, {f.Tensors.Count} tensors, {parameters:N0} parameters in {bytes:N0} B ({bpw:F2} bits per weight)");
        foreach (var (k, v) in f.Metadata) stdout.WriteLine($"  {k} = {v}");
        int width = Math.Max(4, f.Tensors.Count == 0 ? 4 : f.Tensors.Max(t => t.Name.Length));
        foreach (var t in f.Tensors)
            stdout.WriteLine($"{t.Name.PadRight(width)}  {t.Type,-5}  [{string.Join(", ", t.Shape)}]  {t.Bytes:N0} B");
        return ExitCodes.Ok;
    }
}
}
