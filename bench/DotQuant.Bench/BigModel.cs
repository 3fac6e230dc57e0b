using DotQuant.Tests;
using System.Text.Json.Nodes;
using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Bench;

/// <summary>Synthetic checkpoints with the shapes of the models people ship (random bf16 weights,
/// sharded like a Hugging Face download, the Mistral/Llama-2 32k tokenizer), written tensor by
/// tensor so that writing a 13.5 GB model needs no more memory than its largest tensor.</summary>
static class BigModel
{
    public sealed record Shape(string Name, int Hidden, int Intermediate, int Heads, int KvHeads, int Vocab = 32000);

    public static readonly Shape Llama7B = new("Llama-2-7B", 4096, 11008, 32, 32);
    public static readonly Shape Llama70B = new("Llama-2-70B", 8192, 28672, 64, 8);

    /// <summary>Writes (or reuses) a checkpoint of <paramref name="layers"/> blocks.</summary>
    public static string Write(string dir, Shape shape, int layers, string shared, long shardBytes = 2_000_000_000)
    {
        if (File.Exists(Path.Combine(dir, ".complete"))) return dir;
        if (Directory.Exists(dir)) Directory.Delete(dir, true);
        SyntheticModel.Write(dir, new SyntheticModel.Spec
        {
            ModelType = "llama", HiddenSize = shape.Hidden, IntermediateSize = shape.Intermediate, Layers = layers,
            Heads = shape.Heads, KvHeads = shape.KvHeads, VocabSize = shape.Vocab, MaxPositions = 4096,
            TieWordEmbeddings = false, DType = ScalarType.BFloat16, Seed = 7, ShardBytes = shardBytes,
        });
        foreach (var f in new[] { "tokenizer.json", "tokenizer_config.json" })
            File.Copy(Path.Combine(shared, "tokenizers", "mistral-v0.1", f), Path.Combine(dir, f), overwrite: true);
        File.WriteAllText(Path.Combine(dir, ".complete"), "");
        return dir;
    }

    /// <summary>A view of the first <paramref name="layers"/> blocks of a deeper checkpoint: its own
    /// config.json and index, the shard files hard-linked (no copy).</summary>
    public static string Truncated(string source, string dir, int layers)
    {
        if (Directory.Exists(dir)) Directory.Delete(dir, true);
        Directory.CreateDirectory(dir);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(source, "config.json")))!.AsObject();
        config["num_hidden_layers"] = layers;
        File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString(new() { WriteIndented = true }));
        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(source, "model.safetensors.index.json")))!.AsObject();
        var map = new JsonObject();
        var shards = new HashSet<string>();
        foreach (var (name, file) in index["weight_map"]!.AsObject())
        {
            if (name.StartsWith("model.layers.", StringComparison.Ordinal) && int.Parse(name.Split('.')[2]) >= layers) continue;
            map[name] = (string)file!;
            shards.Add((string)file!);
        }
        File.WriteAllText(Path.Combine(dir, "model.safetensors.index.json"), new JsonObject { ["metadata"] = new JsonObject(), ["weight_map"] = map }.ToJsonString());
        foreach (var s in shards) Link(Path.Combine(source, s), Path.Combine(dir, s));
        foreach (var f in new[] { "tokenizer.json", "tokenizer_config.json" })
            File.Copy(Path.Combine(source, f), Path.Combine(dir, f));
        return dir;
    }

    static void Link(string target, string link)
    {
        using var p = System.Diagnostics.Process.Start("ln", [target, link])!;
        p.WaitForExit();
        if (p.ExitCode != 0) File.CreateSymbolicLink(link, target);
    }
}
