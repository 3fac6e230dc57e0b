using DotQuant.Engine.Diagnostics;
using DotQuant.Engine.IO;

namespace DotQuant.Engine.Models;

/// <summary>Picks the architecture adapter for a Hugging Face model folder.</summary>
public static class ModelLoader
{
    public static DecoderModel Load(string modelDir)
    {
        if (!Directory.Exists(modelDir))
            throw new DotQuantException(ErrorCodes.FileNotFound, $"model folder not found: {modelDir}", modelDir);
        var config = ModelConfig.Load(modelDir);
        using var ckpt = Checkpoint.Open(modelDir);
        return config.ModelType switch
        {
            "llama" or "qwen2" or "mistral" => LlamaModel.Load(config, ckpt),
            _ => throw new DotQuantException(ErrorCodes.UnsupportedModelType, $"model_type '{config.ModelType}' is not supported", modelDir),
        };
    }
}
