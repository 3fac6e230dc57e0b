using System.IO.MemoryMappedFiles;
using DotQuant.Runtime;
using DotQuant.Engine.Formats;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using Onnx;
using static TorchSharp.torch;

namespace DotQuant.Engine.Onnx;

/// <summary>An ONNX Runtime GenAI folder we wrote, seen as a Hugging Face checkpoint: each MatMulNBits
/// weight decoded as the operator decodes it ((code − zero)·scale per block, fp32), each transposed float
/// linear turned back to [out, in], every other stored weight under its own name (the graph's small
/// constants live inside model.onnx, the rotary tables are the graph's own). The graph's MatMulNBits nodes
/// give K, N, bits and block size, so what is evaluated is read from the file alone.</summary>
public sealed class OnnxWeightSource : IWeightSource, IDisposable
{
    readonly string _modelPath;
    readonly Dictionary<string, TensorProto> _initializers;
    readonly Dictionary<string, NodeProto> _nbits;      // by the weight it stands for, "<node name>.weight"
    readonly Dictionary<string, TensorShape> _shapes;
    readonly MemoryMappedFile? _data;

    public string Directory { get; }
    public IReadOnlyList<string> Names { get; }

    OnnxWeightSource(string folder, string modelPath, Dictionary<string, TensorProto> initializers, Dictionary<string, NodeProto> nbits,
        Dictionary<string, TensorShape> shapes, List<string> names, MemoryMappedFile? data)
    {
        Directory = folder; _modelPath = modelPath; _initializers = initializers; _nbits = nbits; _shapes = shapes; Names = names; _data = data;
    }

    /// <summary>True when <paramref name="folder"/> is an ONNX GenAI model folder (genai_config.json and model.onnx).</summary>
    public static bool IsOnnxFolder(string folder) =>
        File.Exists(Path.Combine(folder, OnnxPackageWriter.GenAiConfigFile)) && File.Exists(Path.Combine(folder, OnnxPackageWriter.ModelFile));

    public static OnnxWeightSource Open(string folder)
    {
        string path = Path.Combine(folder, OnnxPackageWriter.ModelFile);
        ModelProto model;
        try
        {
            using var f = File.OpenRead(path);
            model = ModelProto.Parser.ParseFrom(f);
        }
        catch (Exception e) when (e is Google.Protobuf.InvalidProtocolBufferException or IOException)
        {
            throw new DotQuantException(ErrorCodes.OnnxModel, $"{path} is not an ONNX model: {e.Message}", path);
        }
        // Protobuf accepts any bytes that decode: a damaged file can lack its graph, repeat a name or give
        // a weight the wrong rank (all found by the fuzzer). Each is the folder's fault, DQ0117.
        if (model.Graph is null)
            throw new DotQuantException(ErrorCodes.OnnxModel, $"{path} has no graph", path);
        var initializers = new Dictionary<string, TensorProto>(StringComparer.Ordinal);
        foreach (var t in model.Graph.Initializer)
        {
            if (!initializers.TryAdd(t.Name, t))
                throw new DotQuantException(ErrorCodes.OnnxModel, $"{path} has two initializers named '{t.Name}'", path);
            if (t.Dims.Any(d => d < 0 || d > int.MaxValue))
                throw new DotQuantException(ErrorCodes.OnnxModel, $"initializer '{t.Name}' has a dimension out of range ({string.Join("×", t.Dims)})", path);
        }
        var nbits = new Dictionary<string, NodeProto>(StringComparer.Ordinal);
        var shapes = new Dictionary<string, TensorShape>(StringComparer.Ordinal);
        var nbitsInputs = new HashSet<string>(StringComparer.Ordinal);
        foreach (var node in model.Graph.Node.Where(n => n.OpType == "MatMulNBits"))
        {
            string name = node.Name + ".weight";
            if (!nbits.TryAdd(name, node))
                throw new DotQuantException(ErrorCodes.OnnxModel, $"{path} has two MatMulNBits nodes named '{node.Name}'", path);
            shapes[name] = new TensorShape(ScalarType.Float32, [Attribute(node, "N", path), Attribute(node, "K", path)]);
            nbitsInputs.UnionWith(node.Input.Skip(1));
        }
        foreach (var t in model.Graph.Initializer.Where(t => !nbitsInputs.Contains(t.Name)))
        {
            if (t.Name.EndsWith(".weight_t", StringComparison.Ordinal))
                shapes[t.Name[..^".weight_t".Length] + ".weight"] = t.Dims.Count == 2
                    ? new TensorShape(ScalarType.Float32, [t.Dims[1], t.Dims[0]])
                    : throw new DotQuantException(ErrorCodes.OnnxModel, $"initializer '{t.Name}' is a transposed weight but has {t.Dims.Count} dimensions, not 2", path);
            else if (t.DataType == (int)TensorProto.Types.DataType.Float && t.DataLocation == TensorProto.Types.DataLocation.External && !t.Name.StartsWith("rotary.", StringComparison.Ordinal))
                shapes[t.Name] = new TensorShape(ScalarType.Float32, t.Dims.ToArray());
        }
        var names = shapes.Keys.Order(StringComparer.Ordinal).ToList();
        string dataPath = Path.Combine(folder, OnnxPackageWriter.DataFile);
        var data = File.Exists(dataPath) && new FileInfo(dataPath).Length > 0 ? MemoryMappedFile.CreateFromFile(dataPath, FileMode.Open, null, 0, MemoryMappedFileAccess.Read) : null;
        return new OnnxWeightSource(folder, path, initializers, nbits, shapes, names, data);
    }

    static long Attribute(NodeProto node, string name, string path) =>
        node.Attribute.FirstOrDefault(a => a.Name == name)?.I is long v && v is > 0 and <= int.MaxValue ? v
        : throw new DotQuantException(ErrorCodes.OnnxModel, $"MatMulNBits node '{node.Name}' has no valid attribute {name}", path);

    public bool Contains(string name) => _shapes.ContainsKey(name);

    public TensorShape? Describe(string name) => _shapes.GetValueOrDefault(name);

    public Tensor Load(string name, params long[] expectedShape)
    {
        var shape = _shapes.GetValueOrDefault(name) ?? throw new DotQuantException(ErrorCodes.WeightMissing, $"'{name}' is not in {_modelPath}", _modelPath);
        if (!shape.Shape.SequenceEqual(expectedShape))
            throw new DotQuantException(ErrorCodes.WeightShape, $"'{name}' is [{string.Join(", ", shape.Shape)}]; [{string.Join(", ", expectedShape)}] was expected", _modelPath);
        return LoadStored(name);
    }

    public Tensor LoadStored(string name)
    {
        if (_nbits.TryGetValue(name, out var n))
        {
            int bits = (int)Attribute(n, "bits", _modelPath), block = (int)Attribute(n, "block_size", _modelPath);
            long rows = Attribute(n, "N", _modelPath), k = Attribute(n, "K", _modelPath);
            var w = new NBitsWeight(bits, block, rows, k, Bytes(n.Input[1]), Floats(n.Input[2]), n.Input.Count > 3 ? Bytes(n.Input[3]) : []);
            if (w.Codes.LongLength != rows * w.Blocks * w.BlobBytes || w.Scales.LongLength != rows * w.Blocks || w.Zeros.LongLength != rows * w.ZeroBytesPerRow)
                throw new DotQuantException(ErrorCodes.OnnxModel, $"MatMulNBits '{n.Name}': its initializers do not have the sizes K={k}, N={rows}, bits={bits}, block={block} imply", _modelPath);
            return w.Dequantize();
        }
        if (name.EndsWith(".weight", StringComparison.Ordinal) && _initializers.ContainsKey(name[..^".weight".Length] + ".weight_t"))
        {
            using var t = FloatTensor(name[..^".weight".Length] + ".weight_t");
            return t.t().contiguous();
        }
        if (!_shapes.ContainsKey(name)) throw new DotQuantException(ErrorCodes.WeightMissing, $"'{name}' is not in {_modelPath}", _modelPath);
        return FloatTensor(name);
    }

    Tensor FloatTensor(string name) => tensor(Floats(name), _initializers[name].Dims.ToArray());

    float[] Floats(string name)
    {
        var bytes = Bytes(name);
        var result = new float[bytes.Length / 4];
        Buffer.BlockCopy(bytes, 0, result, 0, result.Length * 4);
        return result;
    }

    /// <summary>An initializer's bytes, inline or in model.onnx.data.</summary>
    byte[] Bytes(string name)
    {
        if (!_initializers.TryGetValue(name, out var t))
            throw new DotQuantException(ErrorCodes.OnnxModel, $"initializer '{name}' is missing", _modelPath);
        if (t.DataLocation != TensorProto.Types.DataLocation.External) return t.RawData.ToByteArray();
        long Field(string key) =>
            t.ExternalData.FirstOrDefault(e => e.Key == key) is { } entry && long.TryParse(entry.Value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long v)
                ? v : throw new DotQuantException(ErrorCodes.OnnxModel, $"initializer '{name}' has no valid external-data {key}", _modelPath);
        long offset = Field("offset"), length = Field("length");
        if (_data is null || offset < 0 || length < 0 || length > Array.MaxLength)
            throw new DotQuantException(ErrorCodes.OnnxModel, $"initializer '{name}' points outside {OnnxPackageWriter.DataFile}", _modelPath);
        try
        {
            using var view = _data.CreateViewAccessor(offset, length, MemoryMappedFileAccess.Read);
            var bytes = new byte[length];
            view.ReadArray(0, bytes, 0, bytes.Length);
            return bytes;
        }
        catch (Exception e) when (e is ArgumentOutOfRangeException or UnauthorizedAccessException or IOException)
        {
            throw new DotQuantException(ErrorCodes.OnnxModel, $"initializer '{name}' ({offset}+{length}) points outside {OnnxPackageWriter.DataFile}", _modelPath);
        }
    }

    public void Dispose() => _data?.Dispose();
}
