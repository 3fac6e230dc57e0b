using System.Reflection;
using System.Security.Cryptography;
using DotQuant.Runtime;

namespace DotQuant.Runtime;

/// <summary>Finds a quantized model that the build shipped with an app: files under
/// <c>models/&lt;name&gt;/</c> beside the app, or manifest resources <c>models/&lt;name&gt;/...</c> in an
/// assembly (embed: true), which are extracted once to a content-addressed folder under the temp
/// directory because runtimes memory-map model files. Depends on nothing but the BCL, so an app that
/// runs a GGUF with LLamaSharp does not carry the quantization engine or libtorch.</summary>
public static class ModelLocator
{
    /// <summary>The model's folder (a DotQuant/GPTQ package with config.json, or a GGUF output).</summary>
    public static string Find(string name, Assembly? resourceAssembly = null)
    {
        string files = Path.Combine(AppContext.BaseDirectory, "models", name);
        if (File.Exists(Path.Combine(files, "config.json")) || (Directory.Exists(files) && Directory.EnumerateFiles(files, "*.gguf").Any())) return files;
        var asm = resourceAssembly ?? Assembly.GetEntryAssembly();
        if (asm is not null && TryExtract(asm, name) is { } extracted) return extracted;
        throw new DotQuantException(ErrorCodes.FileNotFound,
            $"model '{name}' is neither in {files} nor embedded in {asm?.GetName().Name}; is quant.yaml's output.name '{name}'?");
    }

    /// <summary>The GGUF file of a model shipped with format gguf (what LLamaSharp loads).</summary>
    public static string FindGguf(string name, Assembly? resourceAssembly = null)
    {
        string folder = Find(name, resourceAssembly ?? Assembly.GetEntryAssembly());
        var files = Directory.GetFiles(folder, "*.gguf");
        return files.Length == 1 ? files[0]
            : throw new DotQuantException(ErrorCodes.FileNotFound, $"model '{name}' in {folder} has {files.Length} .gguf files; expected one (quant.yaml output.format: gguf)", folder);
    }

    /// <summary>The folder of a model shipped with format onnx (what ONNX Runtime GenAI's Model loads).</summary>
    public static string FindOnnx(string name, Assembly? resourceAssembly = null)
    {
        string folder = Find(name, resourceAssembly ?? Assembly.GetEntryAssembly());
        return File.Exists(Path.Combine(folder, "genai_config.json")) && File.Exists(Path.Combine(folder, "model.onnx")) ? folder
            : throw new DotQuantException(ErrorCodes.FileNotFound, $"model '{name}' in {folder} is not an ONNX Runtime GenAI folder (no genai_config.json or model.onnx; quant.yaml output.format: onnx)", folder);
    }

    static string? TryExtract(Assembly asm, string name)
    {
        string prefix = $"models/{name}/";
        var resources = asm.GetManifestResourceNames().Where(r => r.StartsWith(prefix, StringComparison.Ordinal)).Order(StringComparer.Ordinal).ToList();
        if (resources.Count == 0) return null;
        // Key the extraction by the assembly's identity and resource sizes so a rebuilt app re-extracts.
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(System.Text.Encoding.UTF8.GetBytes(asm.FullName + "|" + asm.ManifestModule.ModuleVersionId));
        string dir = Path.Combine(Path.GetTempPath(), "dotquant-embedded", Convert.ToHexStringLower(hash.GetHashAndReset())[..24], name);
        if (File.Exists(Path.Combine(dir, ".complete"))) return dir;
        AtomicDirectory.Write(dir, tmp =>
        {
            foreach (var r in resources)
            {
                string target = Path.Combine(tmp, r[prefix.Length..].Replace('/', Path.DirectorySeparatorChar));
                Directory.CreateDirectory(Path.GetDirectoryName(target)!);
                using var source = asm.GetManifestResourceStream(r)!;
                using var file = File.Create(target);
                source.CopyTo(file);
            }
            File.WriteAllText(Path.Combine(tmp, ".complete"), "");
        }, keepExisting: true);
        return dir;
    }
}
