using DotQuant.Engine.Diagnostics;
using DotQuant.Engine.Formats;
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
        // A DotQuant package or a GPTQ checkpoint dequantizes its linears on load.
        using IDisposable source = (IDisposable?)QuantizedPackage.TryOpen(modelDir, config) ?? Checkpoint.Open(modelDir);
        return Load(config, (IWeightSource)source);
    }

    public static DecoderModel Load(ModelConfig config, IWeightSource weights)
    {
        return config.ModelType switch
        {
            "llama" or "qwen2" or "mistral" => LlamaModel.Load(config, weights),
            _ => throw new DotQuantException(ErrorCodes.UnsupportedModelType, $"model_type '{config.ModelType}' is not supported", weights.Directory),
        };
    }
}
