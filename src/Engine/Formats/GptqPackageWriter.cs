using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using DotQuant.Runtime;
using DotQuant.Engine.IO;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Quantizers;
using static TorchSharp.torch;

namespace DotQuant.Engine.Formats;

/// <summary>The Hugging Face GPTQ checkpoint (spec §7): per linear <c>.qweight</c> (codes packed along
/// the input), <c>.qzeros</c> (packed along the output), <c>.scales</c> (F16) and <c>.g_idx</c>; config.json
/// carries quantization_config and quantize_config.json is written too. GPTQ v1 stores zero − 1, which
/// cannot hold a zero point of 0: qzeros are written as v1 while the run goes, and if any layer turned
/// out to need it the finished shards' qzeros are rewritten in place as v2 (gptq_v2).</summary>
public sealed class GptqPackageWriter : SafeTensorsPackageWriter
{
    readonly QuantizeSpec _scheme;
    List<(string Name, int Bits, int Rows)> _qzeros = [];
    bool _needsV2;

    public GptqPackageWriter(QuantizeSpec scheme, string folder, string scratch, long shardBytes, JsonNode? state)
        : base(folder, scratch, shardBytes, state)
    {
        _scheme = scheme;
    }

    public override void AddLinear(string prefix, SolvedLinear solved)
    {
        if (solved is not QuantizedLinear q)
            throw new DotQuantException(ErrorCodes.ManifestCombination, $"format 'gptq' cannot store {solved.Kind} layers; use format 'dotquant'");
        int m = (int)q.Codes.shape[0], n = (int)q.Codes.shape[1], groups = (int)q.Scales.shape[0];
        var zeros = q.Zeros.data<int>().ToArray();
        _needsV2 |= zeros.Any(z => z == 0);
        using (var qweight = tensor(BitPacking.PackColumns(q.Codes.data<byte>().ToArray(), m, n, q.Bits), [BitPacking.Words(n, q.Bits), m]))
            Tensors.Add(prefix + ".qweight", qweight);
        using (var scales = q.Scales.to(ScalarType.Float16))
            Tensors.Add(prefix + ".scales", scales);
        Tensors.Add(prefix + ".g_idx", q.GIdx);
        var v1 = zeros.Select(z => (byte)((z - 1) & ((1 << q.Bits) - 1))).ToArray();
        using (var qzeros = tensor(BitPacking.PackRows(v1, groups, m, q.Bits), [groups, BitPacking.Words(m, q.Bits)]))
            Tensors.Add(prefix + ".qzeros", qzeros);
        _qzeros.Add((prefix + ".qzeros", q.Bits, m));
    }

    protected override JsonObject FormatState() => new()
    {
        ["needs_v2"] = _needsV2,
        ["qzeros"] = new JsonArray(_qzeros.Select(z => (JsonNode?)new JsonObject { ["name"] = z.Name, ["bits"] = z.Bits, ["rows"] = z.Rows }).ToArray()),
    };

    protected override void RestoreFormatState(JsonObject state)
    {
        _needsV2 = (bool)state["needs_v2"]!;
        _qzeros = state["qzeros"]!.AsArray().Select(z => ((string)z!["name"]!, (int)z["bits"]!, (int)z["rows"]!)).ToList();
    }

    public override void FinishTensors(string sourceModelDir)
    {
        base.FinishTensors(sourceModelDir);
        if (_needsV2) RewriteZerosAsV2();
    }

    /// <summary>v1 stores (z − 1) mod 2^b; v2 stores z = (stored + 1) mod 2^b.</summary>
    void RewriteZerosAsV2()
    {
        using var ckpt = Checkpoint.Open(Folder);
        var patches = new List<(string File, long Offset, byte[] Bytes)>();
        foreach (var (name, bits, m) in _qzeros)
        {
            var (file, info) = ckpt.Locate(name);
            int groups = (int)info.Shape[0];
            using var t = file.Load(name);
            var stored = BitPacking.UnpackRows(t.data<int>().ToArray(), groups, m, bits);
            var v2 = stored.Select(s => (byte)((s + 1) & ((1 << bits) - 1))).ToArray();
            var packed = BitPacking.PackRows(v2, groups, m, bits);
            var bytes = new byte[packed.Length * 4];
            Buffer.BlockCopy(packed, 0, bytes, 0, bytes.Length);
            patches.Add((file.Path, info.Offset, bytes));
        }
        ckpt.Dispose();
        // The shard files may be hard links to the run's resume copies, which must stay v1: each
        // patched shard is a new file renamed over its name.
        foreach (var group in patches.GroupBy(p => p.File))
        {
            string tmp = group.Key + ".v2";
            File.Copy(group.Key, tmp, overwrite: true);
            using (var fs = new FileStream(tmp, FileMode.Open, FileAccess.Write, FileShare.None))
            {
                foreach (var (_, offset, bytes) in group)
                {
                    fs.Seek(offset, SeekOrigin.Begin);
                    fs.Write(bytes);
                }
                fs.Flush(true);
            }
            File.Move(tmp, group.Key, overwrite: true);
        }
    }

    public override void WriteMetadata(string sourceModelDir, PackageInfo info, Action<JsonObject>? configPatch)
    {
        var qc = new JsonObject
        {
            ["bits"] = _scheme.Bits,
            ["group_size"] = _scheme.GroupSize,
            ["damp_percent"] = _scheme.Damp,
            ["desc_act"] = _scheme.ActOrder,
            ["static_groups"] = _scheme.StaticGroups,
            ["sym"] = _scheme.Symmetric,
            ["true_sequential"] = true,
            ["quant_method"] = "gptq",
            ["checkpoint_format"] = _needsV2 ? "gptq_v2" : "gptq",
            ["model_name_or_path"] = null,
            ["model_file_base_name"] = "model",
            ["lm_head"] = false,
            ["pack_dtype"] = "int32",
        };
        // Linears left in full precision are named so loaders keep them as plain Linear.
        var skipped = info.Layers.Where(l => !l.Quantized).Select(l => l.Name).ToList();
        if (skipped.Count > 0)
            qc["dynamic"] = new JsonObject(skipped.Select(n => KeyValuePair.Create<string, JsonNode?>("-:" + Regex.Escape(n) + "$", new JsonObject())));
        WriteJson("quantize_config.json", qc);
        var withMeta = (JsonObject)qc.DeepClone();
        withMeta["meta"] = info.ToJson();
        var config = SourceConfig(sourceModelDir, configPatch);
        config["quantization_config"] = withMeta;
        WriteJson("config.json", config);
    }
}
