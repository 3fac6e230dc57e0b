using System.Text.Json;
using System.Text.Json.Nodes;
using DotQuant.Engine.Diagnostics;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using DotQuant.Engine.Quantizers;
using static TorchSharp.torch;

namespace DotQuant.Engine.Formats;

/// <summary>Writes and opens quantized model folders in the two formats:
/// <list type="bullet">
/// <item><b>dotquant</b> (native, docs/format.md): <c>dotquant.json</c> + <c>model.safetensors</c> with,
/// per quantized linear, <c>.qweight</c> (I32, codes packed along the input), <c>.scales</c> (F16 [G, out]),
/// <c>.zeros</c> (U8 [G, out], unshifted), <c>.g_idx</c> (I32 [in]); other tensors as in the source.</item>
/// <item><b>gptq</b> (Hugging Face GPTQ, spec §7): <c>.qweight</c>, <c>.qzeros</c> (zeros packed along the
/// output, stored as zero − 1 in v1), <c>.scales</c>, <c>.g_idx</c>; config.json carries
/// quantization_config and quantize_config.json is written too.</item>
/// </list>
/// Folders are assembled in a temp folder beside the destination and swapped in at the end.</summary>
public static class QuantizedPackage
{
    public const int FormatVersion = 1;
    public const string ManifestFile = "dotquant.json";
    static readonly string[] CopiedFiles = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "tokenizer.model"];
    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>True when any zero point is 0 and therefore cannot be stored as GPTQ v1 (zero − 1 wraps).</summary>
    static bool NeedsV2(IEnumerable<SolvedLinear> layers) =>
        layers.OfType<QuantizedLinear>().Any(q => q.Zeros.min().item<int>() == 0);

    /// <summary>Writes <paramref name="destination"/> atomically. <paramref name="info"/> becomes dotquant.json
    /// (native) or quantization_config.meta (gptq).</summary>
    /// <param name="weights">The float weights the package keeps (the source checkpoint, or its rotated copy).</param>
    /// <param name="names">Every tensor name of the model, in the order to write.</param>
    /// <param name="configPatch">Changes to config.json (e.g. a rotated model's untied head and online Hadamard).</param>
    public static void Write(string destination, bool gptq, string sourceModelDir, IWeightSource weights, IReadOnlyList<string> names,
        IReadOnlyDictionary<string, SolvedLinear> quantized, JsonObject info, QuantizeSettings settings, bool contentAddressed = false,
        Action<JsonObject>? configPatch = null)
    {
        if (gptq && quantized.Values.FirstOrDefault(q => q is not QuantizedLinear) is { } other)
            throw new DotQuantException(ErrorCodes.ManifestCombination, $"format 'gptq' cannot store {other.Kind} layers; use format 'dotquant'");
        bool v2 = gptq && NeedsV2(quantized.Values);
        AtomicDirectory.Write(destination, tmp =>
        {
            var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
            try
            {
                foreach (var name in names)
                {
                    string? prefix = name.EndsWith(".weight", StringComparison.Ordinal) ? name[..^7] : null;
                    if (prefix is not null && quantized.TryGetValue(prefix, out var q))
                    {
                        if (gptq) AddGptq(tensors, prefix, (QuantizedLinear)q, v2);
                        else q.Pack(tensors, prefix);
                    }
                    else
                        tensors[name] = weights.LoadStored(name);
                }
                SafeTensorsWriter.Write(Path.Combine(tmp, "model.safetensors"), tensors,
                    new Dictionary<string, string> { ["format"] = "pt", ["quantized_by"] = "dotquant" });
            }
            finally
            {
                foreach (var t in tensors.Values) t.Dispose();
            }

            foreach (var f in CopiedFiles)
                if (File.Exists(Path.Combine(sourceModelDir, f)))
                    File.Copy(Path.Combine(sourceModelDir, f), Path.Combine(tmp, f));

            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(sourceModelDir, "config.json")))!.AsObject();
            configPatch?.Invoke(config);
            if (gptq)
            {
                var qc = new JsonObject
                {
                    ["bits"] = settings.Bits,
                    ["group_size"] = settings.GroupSize,
                    ["damp_percent"] = settings.Damp,
                    ["desc_act"] = settings.ActOrder,
                    ["static_groups"] = settings.StaticGroups,
                    ["sym"] = settings.Symmetric,
                    ["true_sequential"] = true,
                    ["quant_method"] = "gptq",
                    ["checkpoint_format"] = v2 ? "gptq_v2" : "gptq",
                    ["model_name_or_path"] = null,
                    ["model_file_base_name"] = "model",
                    ["lm_head"] = false,
                    ["pack_dtype"] = "int32",
                };
                // Linears left in full precision are named so loaders keep them as plain Linear.
                var skipped = info["layers"]!.AsArray().Where(l => !(bool)l!["quantized"]!).Select(l => (string)l!["name"]!).ToList();
                if (skipped.Count > 0)
                    qc["dynamic"] = new JsonObject(skipped.Select(n => KeyValuePair.Create<string, JsonNode?>("-:" + System.Text.RegularExpressions.Regex.Escape(n) + "$", new JsonObject())));
                File.WriteAllText(Path.Combine(tmp, "quantize_config.json"), qc.ToJsonString(Indented));
                var withMeta = (JsonObject)qc.DeepClone();
                withMeta["meta"] = info.DeepClone();
                config["quantization_config"] = withMeta;
            }
            else
            {
                File.WriteAllText(Path.Combine(tmp, ManifestFile), info.ToJsonString(Indented));
            }
            File.WriteAllText(Path.Combine(tmp, "config.json"), config.ToJsonString(Indented));
        }, keepExisting: contentAddressed);
    }

    static void AddGptq(Dictionary<string, Tensor> tensors, string prefix, QuantizedLinear q, bool v2)
    {
        int m = (int)q.Codes.shape[0], n = (int)q.Codes.shape[1], groups = (int)q.Scales.shape[0];
        var packed = BitPacking.PackColumns(q.Codes.data<byte>().ToArray(), m, n, q.Bits);
        tensors[prefix + ".qweight"] = tensor(packed, [BitPacking.Words(n, q.Bits), m]);
        tensors[prefix + ".scales"] = q.Scales.to(ScalarType.Float16);
        tensors[prefix + ".g_idx"] = q.GIdx.clone();
        var stored = q.Zeros.data<int>().ToArray().Select(z => (byte)(v2 ? z : (z - 1) & ((1 << q.Bits) - 1))).ToArray();
        tensors[prefix + ".qzeros"] = tensor(BitPacking.PackRows(stored, groups, m, q.Bits), [groups, BitPacking.Words(m, q.Bits)]);
    }

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

/// <summary>The scheme settings a format records.</summary>
public sealed record QuantizeSettings(int Bits, int GroupSize, bool Symmetric, bool ActOrder, bool StaticGroups, double Damp);
