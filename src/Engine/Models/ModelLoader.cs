using DotQuant.Runtime;
using DotQuant.Engine.Formats;
using DotQuant.Engine.Gguf;
using DotQuant.Engine.IO;

namespace DotQuant.Engine.Models;

/// <summary>Picks the architecture adapter for a Hugging Face model folder. <see cref="Open(string)"/>
/// binds the weights and reads a block only when it is used (calibration, evaluation: memory of one
/// block whatever the depth); <see cref="Load(string)"/> also makes every block resident (generation).</summary>
public static class ModelLoader
{
    /// <summary>A streaming model over a float folder, a DotQuant package, a GPTQ checkpoint, a GGUF file or an ONNX GenAI folder
    /// (quantized linears are dequantized when their block is loaded).</summary>
    public static DecoderModel Open(string modelDir)
    {
        if (GgufPath(modelDir) is { } gguf)
        {
            var g = GgufWeightSource.Open(gguf);
            try { return Open(g.Config, g, ownsSource: true); }
            catch { g.Dispose(); throw; }
        }
        if (!Directory.Exists(modelDir))
            throw new DotQuantException(ErrorCodes.FileNotFound, $"model folder not found: {modelDir}", modelDir);
        var config = ModelConfig.Load(modelDir);
        IWeightSource source = Onnx.OnnxWeightSource.IsOnnxFolder(modelDir) ? Onnx.OnnxWeightSource.Open(modelDir)
            : (IWeightSource?)QuantizedPackage.TryOpen(modelDir, config) ?? Checkpoint.Open(modelDir);
        try
        {
            return Open(config, source, ownsSource: true);
        }
        catch
        {
            ((IDisposable)source).Dispose();
            throw;
        }
    }

    /// <summary>The config of a Hugging Face folder or of a GGUF file (from its metadata).</summary>
    public static ModelConfig LoadConfig(string path)
    {
        if (GgufPath(path) is not { } gguf) return ModelConfig.Load(path);
        using var f = GgufFile.Open(gguf);
        return GgufModelConfig.From(f);
    }

    /// <summary>Where a model's tokenizer files are: the folder itself, or the folder holding a GGUF file
    /// (GGUF's embedded vocabulary is not used for tokenizing yet, so tokenizer.json must sit beside it).</summary>
    public static string TokenizerFolder(string path) =>
        GgufPath(path) is { } gguf ? Path.GetDirectoryName(Path.GetFullPath(gguf))! : path;

    /// <summary>The GGUF file a path stands for: a .gguf file, or a folder without config.json holding
    /// exactly one; null for a Hugging Face folder.</summary>
    public static string? GgufPath(string path)
    {
        if (File.Exists(path) && path.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase)) return path;
        if (!Directory.Exists(path) || File.Exists(Path.Combine(path, "config.json"))) return null;
        var files = Directory.GetFiles(path, "*.gguf");
        return files.Length switch
        {
            0 => null,
            1 => files[0],
            _ => throw new DotQuantException(ErrorCodes.FileNotFound, $"{path} holds {files.Length} GGUF files; name the one to use", path),
        };
    }

    /// <summary>A model with every block in memory.</summary>
    public static DecoderModel Load(string modelDir) => Resident(Open(modelDir));

    public static DecoderModel Open(ModelConfig config, IWeightSource weights, bool ownsSource = false) => config.ModelType switch
    {
        "llama" or "qwen2" or "qwen3" or "mistral" or "phi3" => LlamaModel.Open(config, weights, ownsSource),
        "gemma2" or "gemma3_text" => GemmaModel.Open(config, weights, ownsSource),
        "gpt2" => Gpt2Model.Open(config, weights, ownsSource),
        _ => throw new DotQuantException(ErrorCodes.UnsupportedModelType, $"model_type '{config.ModelType}' is not supported", weights.Directory),
    };

    public static DecoderModel Load(ModelConfig config, IWeightSource weights) => Resident(Open(config, weights));

    static DecoderModel Resident(DecoderModel model)
    {
        try
        {
            model.MakeResident();
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }
}
