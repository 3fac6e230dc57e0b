using DotQuant.Runtime;
using DotQuant.Engine.Gguf.Blocks;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Engine.Gguf;

/// <summary>A GGUF file (ours or llama.cpp's) seen as a Hugging Face checkpoint: the config from its
/// metadata, tensors under transformers' names, q/k rows back in transformers' order, every tensor
/// decoded to fp32 when it is asked for (so evaluation holds one block at a time, as with safetensors).
/// llama.cpp's arithmetic decodes the blocks: the model evaluated is the model llama.cpp runs.</summary>
public sealed class GgufWeightSource : IWeightSource, IDisposable
{
    readonly GgufFile _file;
    readonly Dictionary<string, (GgufTensorInfo Tensor, GgufTensorMapping Mapping)> _byHfName;

    public ModelConfig Config { get; }
    public string Directory { get; }
    public IReadOnlyList<string> Names { get; }
    public GgufFile File => _file;

    GgufWeightSource(GgufFile file, ModelConfig config, Dictionary<string, (GgufTensorInfo, GgufTensorMapping)> byHfName, IReadOnlyList<string> names)
    {
        _file = file; Config = config; _byHfName = byHfName; Names = names;
        Directory = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(file.Path))!;
    }

    public static GgufWeightSource Open(string path)
    {
        var file = GgufFile.Open(path);
        try
        {
            var config = GgufModelConfig.From(file);
            var map = new Dictionary<string, (GgufTensorInfo, GgufTensorMapping)>(StringComparer.Ordinal);
            var names = new List<string>();
            foreach (var m in GgufArchitectures.Tensors(config, _ => true))
            {
                if (file.Tensor(m.Name) is not { } t) continue;
                if (!t.Shape.SequenceEqual(m.Shape))
                    throw new DotQuantException(ErrorCodes.WeightShape, $"'{m.Name}' is [{string.Join(", ", t.Shape)}]; the metadata implies [{string.Join(", ", m.Shape)}]", path);
                if (!BlockCodec.TryGet(t.Type, out _))
                    throw new DotQuantException(ErrorCodes.GgufUnsupported, $"'{m.Name}' is stored as {t.Type}, which this version cannot decode yet (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K to Q6_K)", path);
                map[m.Source] = (t, m);
                names.Add(m.Source);
            }
            return new GgufWeightSource(file, config, map, names);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    public bool Contains(string name) => _byHfName.ContainsKey(name);

    public TensorShape? Describe(string name) => _byHfName.TryGetValue(name, out var e) ? new TensorShape(ScalarType.Float32, e.Mapping.Shape) : null;

    public Tensor Load(string name, params long[] expectedShape)
    {
        var (t, m) = Entry(name);
        if (!m.Shape.SequenceEqual(expectedShape))
            throw new DotQuantException(ErrorCodes.WeightShape, $"'{t.Name}' is [{string.Join(", ", m.Shape)}]; [{string.Join(", ", expectedShape)}] was expected", _file.Path);
        return LoadStored(name);
    }

    public Tensor LoadStored(string name)
    {
        var (t, m) = Entry(name);
        var decoded = Decode(t, 0, t.Rows);
        if (m.Offset != 0)
            for (int i = 0; i < decoded.Length; i++) decoded[i] -= m.Offset;
        var result = tensor(decoded, m.Shape);
        if (m.RowOrder is not { } order) return result;
        // GGUF row r holds transformers' row order[r].
        using (result)
        {
            using var index = tensor(order.Select(r => (long)r).ToArray());
            var rows = m.IsMatrix ? result : result.unsqueeze(1);
            var back = zeros_like(rows).index_copy_(0, index, rows);
            return m.IsMatrix ? back : back.squeeze(1);
        }
    }

    public Tensor LoadRows(string name, Tensor rows)
    {
        var (t, m) = Entry(name);
        if (!m.IsMatrix || m.RowOrder is not null) return ((IWeightSource)this).LoadRowsOfWhole(name, rows);
        using var r = rows.to(ScalarType.Int64).contiguous();
        var ids = r.data<long>().ToArray();
        var result = new float[ids.Length * t.RowLength];
        for (int i = 0; i < ids.Length; i++)
            Decode(t, ids[i], 1).CopyTo(result.AsSpan(i * (int)t.RowLength));
        return tensor(result, [ids.Length, t.RowLength]);
    }

    float[] Decode(GgufTensorInfo t, long first, long count)
    {
        var codec = BlockCodec.For(t.Type);
        var bytes = new byte[codec.Info.RowBytes(t.RowLength) * count];
        _file.ReadRows(t, first, count, bytes);
        var values = codec.DequantizeRows(bytes, (int)t.RowLength);
        foreach (float v in values)
            if (!float.IsFinite(v))
                throw new DotQuantException(ErrorCodes.NonFinite, $"'{t.Name}' decodes to NaN or Inf", _file.Path);
        return values;
    }

    (GgufTensorInfo, GgufTensorMapping) Entry(string name) =>
        _byHfName.TryGetValue(name, out var e) ? e
        : throw new DotQuantException(ErrorCodes.WeightMissing, $"'{name}' has no tensor in {_file.Path}", _file.Path);

    public void Dispose() => _file.Dispose();
}
