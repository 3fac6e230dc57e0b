using System.Text.Json;
using System.Text.Json.Nodes;
using DotQuant.Runtime;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using DotQuant.Engine.Quantizers;
using static TorchSharp.torch;

namespace DotQuant.Engine.Formats;

/// <summary>Opens quantized model folders in the two formats (written by <see cref="PackageWriter"/>):
/// <list type="bullet">
/// <item><b>dotquant</b> (native, docs/format.md): <c>dotquant.json</c> + <c>model.safetensors</c> with,
/// per quantized linear, <c>.qweight</c> (I32, codes packed along the input), <c>.scales</c> (F16 [G, out]),
/// <c>.zeros</c> (U8 [G, out], unshifted), <c>.g_idx</c> (I32 [in]); other tensors as in the source.</item>
/// <item><b>gptq</b> (Hugging Face GPTQ, spec §7): <c>.qweight</c>, <c>.qzeros</c> (zeros packed along the
/// output, stored as zero − 1 in v1), <c>.scales</c>, <c>.g_idx</c>; config.json carries
/// quantization_config and quantize_config.json is written too.</item>
/// </list>
/// The tensors may be in one file or in shards with an index.</summary>
public static class QuantizedPackage
{
    public const int FormatVersion = 1;
    public const string ManifestFile = "dotquant.json";

    /// <summary>Opens a native package or a GPTQ folder as a weight source (null for a float folder).</summary>
    public static QuantizedWeights? TryOpen(string dir, ModelConfig config)
    {
        string manifest = Path.Combine(dir, ManifestFile);
        if (File.Exists(manifest)) return OpenNative(dir, manifest);
        if (config.Gptq is { } g) return OpenGptq(dir, config, g);
        return null;
    }

    static QuantizedWeights OpenNative(string dir, string manifest)
    {
        JsonNode root;
        try
        {
            root = JsonNode.Parse(File.ReadAllText(manifest))!;
        }
        catch (JsonException e)
        {
            throw new DotQuantException(ErrorCodes.PackageRead, $"dotquant.json is not well-formed JSON: {e.Message}", manifest);
        }
        if ((int?)root["format_version"] is not FormatVersion)
            throw new DotQuantException(ErrorCodes.PackageRead, $"dotquant.json format_version {(root["format_version"]?.ToJsonString() ?? "missing")} is not supported (this engine reads {FormatVersion})", manifest);
        var layouts = new Dictionary<string, QuantizedLayout>(StringComparer.Ordinal);
        foreach (var l in root["layers"]?.AsArray() ?? [])
        {
            if (l is null || !(bool)(l["quantized"] ?? false)) continue;
            string name = (string)l["name"]!;
            string kind = (string?)l["kind"] ?? "grid";
            if (kind is not ("grid" or "spqr" or "billm"))
                throw new DotQuantException(ErrorCodes.PackageRead, $"layer '{name}' has kind '{kind}', which this engine cannot read (grid, spqr, billm)", manifest);
            layouts[name] = new QuantizedLayout(name, (int)l["bits"]!, (int)l["group_size"]!, (long)l["in_features"]!, (long)l["out_features"]!, 0, false, kind, l);
        }
        return new QuantizedWeights(Checkpoint.Open(dir), layouts);
    }

    static QuantizedWeights OpenGptq(string dir, ModelConfig config, GptqConfig g)
    {
        var ckpt = Checkpoint.Open(dir);
        var layouts = new Dictionary<string, QuantizedLayout>(StringComparer.Ordinal);
        foreach (var t in ckpt.Tensors.Where(t => t.Name.EndsWith(".qweight", StringComparison.Ordinal)))
        {
            string prefix = t.Name[..^".qweight".Length];
            long outF = t.Shape.Length == 2 ? t.Shape[1] : 0;
            long inF = ckpt.Contains(prefix + ".g_idx") ? ckpt.Info(prefix + ".g_idx").Shape[0] : t.Shape[0] * 32 / g.Bits;
            layouts[prefix] = new QuantizedLayout(prefix, g.Bits, g.GroupSize, inF, outF, g.V2 ? 0 : 1, true);
        }
        return new QuantizedWeights(ckpt, layouts);
    }
}

