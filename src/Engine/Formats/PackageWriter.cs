using System.Text.Json;
using System.Text.Json.Nodes;
using DotQuant.Engine.Diagnostics;
using DotQuant.Engine.IO;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Quantizers;

namespace DotQuant.Engine.Formats;

/// <summary>Assembles a package folder from what a run produces, block after block: float tensors are
/// copied through as stored, each solved linear is packed as the format stores it, and everything
/// goes straight to a sharded safetensors writer (nothing accumulates in memory). The metadata
/// files are written last. One subclass per output format.</summary>
public abstract class PackageWriter : IDisposable
{
    protected static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };
    static readonly string[] CopiedFiles = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "tokenizer.model"];

    protected ShardedSafeTensorsWriter Tensors { get; }
    /// <summary>The folder being assembled (swapped into place by the caller when complete).</summary>
    public string Folder { get; }

    protected PackageWriter(string folder, string scratch, long shardBytes, JsonNode? state)
    {
        Folder = folder;
        Directory.CreateDirectory(folder);
        Tensors = state?["tensors"] is { } t
            ? ShardedSafeTensorsWriter.Resume(scratch, shardBytes, ShardedSafeTensorsWriter.State.FromJson(t))
            : new ShardedSafeTensorsWriter(scratch, shardBytes);
        if (state?["format"] is JsonObject f) RestoreFormatState(f);
    }

    /// <summary>The writer for a manifest's output format.</summary>
    public static PackageWriter Create(OutputFormat format, QuantizeSpec scheme, string folder, string scratch, long shardBytes, JsonNode? state = null) => format switch
    {
        OutputFormat.DotQuant => new DotQuantPackageWriter(folder, scratch, shardBytes, state),
        OutputFormat.Gptq => new GptqPackageWriter(scheme, folder, scratch, shardBytes, state),
        _ => throw new ArgumentOutOfRangeException(nameof(format)),
    };

    /// <summary>Copies a float tensor through as stored (straight from the mapped file when it can).</summary>
    public void AddStored(string name, IWeightSource source)
    {
        if (source is Checkpoint ckpt)
        {
            var (file, info) = ckpt.Locate(name);
            Tensors.Add(name, info.DType, info.Shape, info.Length, s => file.CopyTo(info, s));
            return;
        }
        using var t = source.LoadStored(name);
        Tensors.Add(name, t);
    }

    /// <summary>Packs one solved linear as the format stores it (tensor names start with <paramref name="prefix"/>).</summary>
    public abstract void AddLinear(string prefix, SolvedLinear q);

    /// <summary>Everything added so far made durable; the returned state resumes the writer.</summary>
    public JsonNode Commit() => new JsonObject { ["tensors"] = Tensors.Commit().ToJson(), ["format"] = FormatState() };

    protected virtual JsonObject FormatState() => new();
    protected virtual void RestoreFormatState(JsonObject state) { }

    /// <summary>Closes the shards into <see cref="Folder"/> and copies the tokenizer files.</summary>
    public virtual void FinishTensors(string sourceModelDir)
    {
        Tensors.Finish(Folder);
        foreach (var f in CopiedFiles)
            if (File.Exists(Path.Combine(sourceModelDir, f)))
                File.Copy(Path.Combine(sourceModelDir, f), Path.Combine(Folder, f), overwrite: true);
    }

    /// <summary>config.json (the source's, patched) and the format's metadata. Called again when the
    /// evaluation after quantization has completed the info.</summary>
    public abstract void WriteMetadata(string sourceModelDir, PackageInfo info, Action<JsonObject>? configPatch);

    protected JsonObject SourceConfig(string sourceModelDir, Action<JsonObject>? configPatch)
    {
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(sourceModelDir, "config.json")))!.AsObject();
        configPatch?.Invoke(config);
        return config;
    }

    protected void WriteJson(string name, JsonNode node) => File.WriteAllText(Path.Combine(Folder, name), node.ToJsonString(Indented));

    public void Dispose() => Tensors.Dispose();
}

/// <summary>The native format (docs/format.md): each layer packs itself (<see cref="SolvedLinear.Pack"/>),
/// dotquant.json describes the scheme and every layer.</summary>
public sealed class DotQuantPackageWriter(string folder, string scratch, long shardBytes, JsonNode? state)
    : PackageWriter(folder, scratch, shardBytes, state)
{
    public override void AddLinear(string prefix, SolvedLinear q)
    {
        var tensors = new Dictionary<string, TorchSharp.torch.Tensor>(StringComparer.Ordinal);
        try
        {
            q.Pack(tensors, prefix);
            foreach (var (name, t) in tensors) Tensors.Add(name, t);
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();
        }
    }

    public override void WriteMetadata(string sourceModelDir, PackageInfo info, Action<JsonObject>? configPatch)
    {
        WriteJson("config.json", SourceConfig(sourceModelDir, configPatch));
        WriteJson(QuantizedPackage.ManifestFile, info.ToJson());
    }
}
