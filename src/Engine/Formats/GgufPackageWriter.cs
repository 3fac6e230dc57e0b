using System.Text.Json.Nodes;
using DotQuant.Engine.Calibration;
using DotQuant.Engine.Gguf;
using DotQuant.Engine.Gguf.Blocks;
using DotQuant.Engine.Gguf.Grids;
using DotQuant.Engine.Imatrix;
using DotQuant.Runtime;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Quantizers;

namespace DotQuant.Engine.Formats;

/// <summary>One GGUF file, <c>&lt;name&gt;-&lt;type&gt;.gguf</c>, that llama.cpp runs as it is. Every tensor's
/// name, shape and type is known before the first weight is read (the run's plan gives the calibrated
/// linears' types, the named mix the rest), so the header goes out first and tensor data is appended in
/// the order the pipeline produces it: the blocks, then embeddings, final norm and head. A solved linear
/// is stored as the bytes its grid encodes (the calibrator optimized exactly those); q and k rows are
/// permuted after encoding (GGUF rows are independent). Resuming truncates the file to the last block
/// committed. Beside it: dotquant.json (the run's report) and the tokenizer files.</summary>
public sealed class GgufPackageWriter : PackageWriter
{
    readonly GgufPackageLayout _layout;
    readonly Dictionary<string, GgufTensorSpec> _specs = new(StringComparer.Ordinal);
    readonly GgufWriter _writer;
    readonly string _path;
    /// <summary>hessian: imatrix — tensors outside the blocks with an entry (output.weight, collected with
    /// --process-output) are quantized with it, as llama-quantize does.</summary>
    readonly ImportanceMatrix? _imatrix;
    readonly string? _imatrixPath;

    public GgufPackageWriter(QuantManifest m, RunPlan plan, DecoderModel model, string folder, string scratch, JsonNode? state) : base(folder)
    {
        var recipe = m.Output.Gguf!;
        _layout = GgufPackageLayout.For(model.Config, model.Weights, recipe);
        _path = Path.Combine(folder, m.Output.GgufFileName!);
        _imatrixPath = m.Quantize.Imatrix;
        _imatrix = _imatrixPath is null ? null : ImportanceMatrix.Load(_imatrixPath);
        var constants = GgufArchitectures.Constants(model.Config);
        var specs = constants.Select(k => new GgufTensorSpec(k.Name, k.Dims, GgmlType.F32)).ToList();
        foreach (var source in ArrivalOrder(model))
        {
            if (_layout.Ignores(source)) continue;
            var mapping = _layout.Require(source);
            var linear = mapping.IsMatrix && source.EndsWith(".weight", StringComparison.Ordinal) ? plan.PlanOf(source[..^".weight".Length]) : null;
            // A calibrated linear has its plan's type; one left in full precision is F16 (or the float file's type).
            var type = linear is null ? _layout.StoredType(mapping)
                : linear.Options?.GgufType ?? (recipe.IsFloat ? recipe.Base : GgmlType.F16);
            var spec = new GgufTensorSpec(mapping.Name, mapping.Dims, type);
            specs.Add(spec);
            _specs[source] = spec;
        }
        var metadata = GgufFloatExport.Header(_layout.Config, m.Output.Name, (uint)recipe.FileType)
            .Concat(recipe.IsFloat ? [] : [new("general.quantization_version", GgufValue.Of(2u))])
            .Concat(GgufVocab.Load(model.Weights.Directory, _layout.Config.VocabSize).Metadata());
        GgufWriterState? resume = state is null ? null : new GgufWriterState((long)state["length"]!, (int)state["tensor"]!);
        _writer = new GgufWriter(_path, Path.Combine(scratch, "model.gguf.partial"), metadata, specs, resume: resume);
        // The config's tensors go first; a resumed file has them already (they precede the first block).
        if (resume is null) GgufFloatExport.WriteConstants(_writer, constants);
    }

    /// <summary>How the pipeline hands tensors over: each block's, then the rest (DecoderModel's one order).</summary>
    static IEnumerable<string> ArrivalOrder(DecoderModel model) =>
        Enumerable.Range(0, model.BlockCount).SelectMany(model.BlockTensorNames).Concat(model.OutsideTensorNames());

    public override string EvaluationPath => _path;

    public override void AddStored(string name, IWeightSource source)
    {
        if (_layout.Ignores(name)) return;
        var spec = _specs[name];
        var mapping = _layout.Require(name);
        var importance = mapping.IsMatrix ? _imatrix?.Importance(mapping.Name) : null;
        if (importance is not null && importance.Length != mapping.Shape[1])
            throw new DotQuantException(ErrorCodes.ImatrixMismatch, $"{mapping.Name} has {importance.Length} importance values for {mapping.Shape[1]} columns", _imatrixPath);
        GgufFloatExport.WriteTensor(_writer, source, mapping, BlockCodec.For(spec.Type), importance);
    }

    public override void AddLinear(string prefix, SolvedLinear q)
    {
        string name = prefix + ".weight";
        var spec = _specs[name];
        if (q is not GgufRowsLinear rows || rows.Type != spec.Type)
            throw new InvalidOperationException($"{prefix}: solved as {(q as GgufRowsLinear)?.Type.ToString() ?? q.Kind}, declared {spec.Type}");
        var bytes = rows.EncodeRows(0, rows.OutFeatures);
        if (_layout.Require(name).RowOrder is { } order)
        {
            int rowBytes = bytes.Length / order.Length;
            var permuted = new byte[bytes.Length];
            for (int r = 0; r < order.Length; r++)
                bytes.AsSpan(order[r] * rowBytes, rowBytes).CopyTo(permuted.AsSpan(r * rowBytes));
            bytes = permuted;
        }
        _writer.Write(spec.Name, bytes);
    }

    public override JsonNode Commit()
    {
        var s = _writer.Checkpoint();
        return new JsonObject { ["length"] = s.Length, ["tensor"] = s.Tensor };
    }

    public override void FinishTensors(string sourceModelDir)
    {
        _writer.Commit();
        CopyTokenizerFiles(sourceModelDir);
    }

    public override void WriteMetadata(string sourceModelDir, PackageInfo info, Action<JsonObject>? configPatch) =>
        WriteJson(QuantizedPackage.ManifestFile, info.ToJson());

    public override void Dispose() => _writer.Dispose();
}
