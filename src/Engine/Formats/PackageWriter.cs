using System.Text.Json;
using System.Text.Json.Nodes;
using DotQuant.Engine.Calibration;
using DotQuant.Runtime;
using DotQuant.Engine.IO;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Quantizers;

namespace DotQuant.Engine.Formats;

/// <summary>Assembles an output from what a run produces, block after block: float tensors are copied
/// through (or converted, as the format stores them), each solved linear is packed as the format stores
/// it, and everything goes straight to disk (nothing accumulates in memory). The metadata files are
/// written last. One subclass per output format.</summary>
public abstract class PackageWriter : IDisposable
{
    protected static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>The folder being assembled (swapped into place by the caller when complete).</summary>
    public string Folder { get; }

    protected PackageWriter(string folder)
    {
        Folder = folder;
        Directory.CreateDirectory(folder);
    }

    /// <summary>The writer for a manifest's output format. <paramref name="state"/> resumes an interrupted run.</summary>
    public static PackageWriter Create(QuantManifest m, RunPlan plan, DecoderModel model, string folder, string scratch, JsonNode? state = null) => m.Output.Format switch
    {
        OutputFormat.DotQuant => new DotQuantPackageWriter(folder, Path.Combine(scratch, "shards"), m.Output.ShardBytes, state),
        OutputFormat.Gptq => new GptqPackageWriter(m.Quantize, folder, Path.Combine(scratch, "shards"), m.Output.ShardBytes, state),
        OutputFormat.Gguf => new GgufPackageWriter(m, plan, model, folder, scratch, state),
        OutputFormat.Onnx => new OnnxPackageWriter(plan, model, m.Output.OnnxHead, m.Output.OnnxAccuracyLevel, folder, scratch, state),
        _ => throw new ArgumentOutOfRangeException(nameof(m)),
    };

    /// <summary>A float tensor the run does not quantize (norms, embeddings, skipped linears).</summary>
    public abstract void AddStored(string name, IWeightSource source);

    /// <summary>Packs one solved linear as the format stores it (tensor names start with <paramref name="prefix"/>).</summary>
    public abstract void AddLinear(string prefix, SolvedLinear q);

    /// <summary>Everything added so far made durable; the returned state resumes the writer.</summary>
    public abstract JsonNode Commit();

    /// <summary>Completes the tensor files in <see cref="Folder"/> and copies the tokenizer files.</summary>
    public abstract void FinishTensors(string sourceModelDir);

    /// <summary>The metadata files. Called again when the evaluation after quantization has completed the info.</summary>
    public abstract void WriteMetadata(string sourceModelDir, PackageInfo info, Action<JsonObject>? configPatch);

    /// <summary>What the evaluation after quantization opens (<see cref="ModelLoader.Open(string)"/>).</summary>
    public virtual string EvaluationPath => Folder;

    protected static readonly string[] TokenizerFiles = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "tokenizer.model"];

    protected void CopyTokenizerFiles(string sourceModelDir)
    {
        foreach (var f in TokenizerFiles)
            if (File.Exists(Path.Combine(sourceModelDir, f)))
                File.Copy(Path.Combine(sourceModelDir, f), Path.Combine(Folder, f), overwrite: true);
    }

    /// <summary>The source's config.json with the run's patch (a rotated model's untied head, for one).</summary>
    protected static JsonObject SourceConfig(string sourceModelDir, Action<JsonObject>? configPatch)
    {
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(sourceModelDir, "config.json")))!.AsObject();
        configPatch?.Invoke(config);
        return config;
    }

    protected void WriteJson(string name, JsonNode node) => File.WriteAllText(Path.Combine(Folder, name), node.ToJsonString(Indented));

    public abstract void Dispose();
}

/// <summary>Formats stored as (sharded) safetensors plus JSON metadata: the native format and GPTQ.</summary>
public abstract class SafeTensorsPackageWriter : PackageWriter
{
    protected ShardedSafeTensorsWriter Tensors { get; }

    protected SafeTensorsPackageWriter(string folder, string scratch, long shardBytes, JsonNode? state) : base(folder)
    {
        Tensors = state?["tensors"] is { } t
            ? ShardedSafeTensorsWriter.Resume(scratch, shardBytes, ShardedSafeTensorsWriter.State.FromJson(t))
            : new ShardedSafeTensorsWriter(scratch, shardBytes);
        if (state?["format"] is JsonObject f) RestoreFormatState(f);
    }

    /// <summary>Copies a float tensor through as stored (straight from the mapped file when it can).</summary>
    public override void AddStored(string name, IWeightSource source)
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

    public override JsonNode Commit() => new JsonObject { ["tensors"] = Tensors.Commit().ToJson(), ["format"] = FormatState() };

    protected virtual JsonObject FormatState() => new();
    protected virtual void RestoreFormatState(JsonObject state) { }

    /// <summary>Closes the shards into <see cref="PackageWriter.Folder"/> and copies the tokenizer files.</summary>
    public override void FinishTensors(string sourceModelDir)
    {
        Tensors.Finish(Folder);
        CopyTokenizerFiles(sourceModelDir);
    }


    public override void Dispose() => Tensors.Dispose();
}

/// <summary>The native format (docs/format.md): each layer packs itself (<see cref="SolvedLinear.Pack"/>),
/// dotquant.json describes the scheme and every layer.</summary>
public sealed class DotQuantPackageWriter(string folder, string scratch, long shardBytes, JsonNode? state)
    : SafeTensorsPackageWriter(folder, scratch, shardBytes, state)
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
