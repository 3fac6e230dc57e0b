using System.Text.Json.Nodes;
using DotQuant.Engine.Calibration;
using DotQuant.Engine.IO;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Onnx;
using DotQuant.Engine.Quantizers;
using Google.Protobuf;
using Onnx;
using static TorchSharp.torch;

namespace DotQuant.Engine.Formats;

/// <summary>An ONNX Runtime GenAI model folder: model.onnx (the graph, a few hundred KB), model.onnx.data
/// (every weight, appended as the pipeline hands it over), genai_config.json, the tokenizer files, and
/// beside them config.json and dotquant.json. A solved linear becomes the MatMulNBits codes, scales and
/// zero points of its grid (the bytes the calibrator optimized); every other tensor is stored fp32, a
/// float linear transposed to [in, out] for MatMul. The graph is built once everything is written, from
/// the config and what each linear became.</summary>
public sealed class OnnxPackageWriter : PackageWriter
{
    public const string ModelFile = "model.onnx";
    public const string DataFile = "model.onnx.data";
    public const string GenAiConfigFile = "genai_config.json";

    readonly DecoderModel _model;
    readonly HashSet<string> _linears;
    readonly Dictionary<string, NBitsShape> _nbits = new(StringComparer.Ordinal);
    readonly OnnxDataFile _data;
    readonly OnnxHead _head;
    readonly int _accuracyLevel;

    /// <summary>The head's MatMulNBits node and initializers (when output.onnx.head quantizes it).</summary>
    public const string HeadLinear = "lm_head";

    public OnnxPackageWriter(RunPlan plan, DecoderModel model, OnnxHead head, int accuracyLevel, string folder, string scratch, JsonNode? state) : base(folder)
    {
        _model = model;
        _head = head;
        _accuracyLevel = accuracyLevel;
        _linears = plan.Linears.Select(l => l.Linear.Name).ToHashSet(StringComparer.Ordinal);
        _data = new OnnxDataFile(Path.Combine(scratch, DataFile + ".partial"), state?["data"]);
        if (state?["nbits"] is JsonObject nb)
            foreach (var (name, v) in nb) _nbits[name] = new NBitsShape((int)v!["bits"]!, (int)v["block_size"]!);
    }

    public override void AddStored(string name, IWeightSource source)
    {
        using var stored = source.LoadStored(name);
        using var f = stored.to(ScalarType.Float32);
        string? linear = name.EndsWith(".weight", StringComparison.Ordinal) && _linears.Contains(name[..^".weight".Length]) ? name[..^".weight".Length] : null;
        bool head = name == _model.HeadName && _head != OnnxHead.Float;
        if (linear is not null)
        {
            using var t = f.t().contiguous();
            Add(OnnxLinear.Transposed(linear), t);
        }
        else if (!head || name != "lm_head.weight") Add(name, f);     // a tied head is still the embedding
        if (head) AddHead(f);
    }

    /// <summary>The head as MatMulNBits: round-to-nearest on our asymmetric grid in blocks of 32 (no
    /// calibrator solves the head; at 8 bits it moves perplexity by a few hundredths of a percent and cuts
    /// the bytes read per generated token 4×, which is most of them for a small model).</summary>
    void AddHead(Tensor weight)
    {
        var options = new SolverOptions { Kind = SolverKind.Rtn, Bits = _head == OnnxHead.Int4 ? 4 : 8, GroupSize = 32 };
        using var q = RtnSolver.Solve(weight, options);
        AddLinear(HeadLinear, q);
    }

    void Add(string name, Tensor fp32)
    {
        var bytes = new byte[fp32.NumberOfElements * 4];
        fp32.contiguous().data<float>().CopyTo(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes.AsSpan()));
        _data.Add(name, TensorProto.Types.DataType.Float, fp32.shape, bytes);
    }

    public override void AddLinear(string prefix, SolvedLinear q)
    {
        if (q is not QuantizedLinear grid)
            throw new InvalidOperationException($"{prefix}: a {q.Kind} linear has no MatMulNBits form");
        var w = NBitsWeight.From(grid);
        _data.Add(OnnxLinear.QWeight(prefix), TensorProto.Types.DataType.Uint8, [w.N, w.Blocks, w.BlobBytes], w.Codes);
        _data.Add(OnnxLinear.Scales(prefix), TensorProto.Types.DataType.Float, [w.N * w.Blocks], System.Runtime.InteropServices.MemoryMarshal.AsBytes(w.Scales.AsSpan()));
        _data.Add(OnnxLinear.QZeros(prefix), TensorProto.Types.DataType.Uint8, [w.N * w.ZeroBytesPerRow], w.Zeros);
        _nbits[prefix] = new NBitsShape(w.Bits, w.BlockSize);
    }

    public override JsonNode Commit() => new JsonObject
    {
        ["data"] = _data.Checkpoint(),
        ["nbits"] = new JsonObject(_nbits.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)new JsonObject { ["bits"] = kv.Value.Bits, ["block_size"] = kv.Value.BlockSize }))),
    };

    public override void FinishTensors(string sourceModelDir)
    {
        var c = _model.Config;
        foreach (var (name, table) in OnnxFamily.Tables(c))
            using (table) Add(name, table);
        var names = _data.Initializers.Select(i => i.Name).ToHashSet(StringComparer.Ordinal);
        var specs = Enumerable.Range(0, _model.BlockCount).SelectMany(b => _model.LinearLayout(b).SelectMany(g => g)).ToDictionary(s => s.Name, StringComparer.Ordinal);
        var graph = DecoderOnnxGraph.Build(c, name =>
        {
            if (name == HeadLinear) return new OnnxLinear(name, c.HiddenSize, c.VocabSize, _nbits.GetValueOrDefault(name), null, _accuracyLevel);
            var spec = specs[name];
            return new OnnxLinear(name, spec.InFeatures, spec.OutFeatures, _nbits.GetValueOrDefault(name), names.Contains(name + ".bias") ? name + ".bias" : null, _accuracyLevel);
        }, names.Contains);
        graph.Name = c.ModelType;
        graph.Initializer.AddRange(_data.Initializers.Select(i => i.ToProto(DataFile)));
        var model = new ModelProto { IrVersion = 8, ProducerName = "DotQuant", Graph = graph };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 17 });
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = OnnxGraphBuilder.MicrosoftDomain, Version = 1 });
        _data.Dispose();
        // A link, not a move: a run stopped before its publication resumes from the scratch file.
        FileLinks.LinkOrCopy(_data.Path, Path.Combine(Folder, DataFile));
        using (var f = File.Create(Path.Combine(Folder, ModelFile)))
            model.WriteTo(f);
        CopyTokenizerFiles(sourceModelDir);
        WriteJson(GenAiConfigFile, GenAiConfig.For(c));
    }

    public override void WriteMetadata(string sourceModelDir, PackageInfo info, Action<JsonObject>? configPatch)
    {
        var config = SourceConfig(sourceModelDir, configPatch);
        // A quantized head is its own tensor now (lm_head.weight when read back), no longer the embedding.
        if (_head != OnnxHead.Float) config["tie_word_embeddings"] = false;
        WriteJson("config.json", config);
        WriteJson(QuantizedPackage.ManifestFile, info.ToJson());
    }

    public override void Dispose() => _data.Dispose();
}
