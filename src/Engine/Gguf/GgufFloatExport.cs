using DotQuant.Engine.Gguf.Blocks;
using DotQuant.Engine.IO;
using DotQuant.Runtime;
using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Engine.Gguf;

/// <summary>A Hugging Face Llama-family folder as a float GGUF (F32, F16 or BF16 matrices; vectors F32,
/// as llama.cpp keeps norms and biases), what convert_hf_to_gguf.py does. Tensors stream from the
/// mapped checkpoint a slab of rows at a time, so memory stays far below one tensor.</summary>
public static class GgufFloatExport
{
    const long SlabBytes = 64L << 20;

    public static void Write(string modelDir, string path, GgmlType type, string? name = null)
    {
        if (type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16))
            throw new DotQuantException(ErrorCodes.GgufUnsupported, $"a float GGUF is F32, F16 or BF16, not {type}");
        // Through the model's weight view: what the family's adapter reads (GPT-2's Conv1D turned to [out, in]).
        using var model = ModelLoader.Open(modelDir);
        var config = model.Config;
        var ckpt = model.Weights;
        var mappings = GgufArchitectures.Tensors(config, ckpt.Contains);
        var vocab = GgufVocab.Load(modelDir, config.VocabSize);
        var constants = GgufArchitectures.Constants(config);
        var specs = constants.Select(k => new GgufTensorSpec(k.Name, k.Dims, GgmlType.F32))
            .Concat(mappings.Select(m => new GgufTensorSpec(m.Name, m.Dims, m.IsMatrix ? type : GgmlType.F32))).ToList();
        var metadata = Header(config, name ?? Path.GetFileName(Path.GetFullPath(modelDir).TrimEnd('/')), FileType(type))
            .Concat(vocab.Metadata());
        using var writer = new GgufWriter(path, metadata, specs);
        WriteConstants(writer, constants);
        for (int i = 0; i < mappings.Count; i++)
            WriteTensor(writer, ckpt, mappings[i], BlockCodec.For(specs[constants.Count + i].Type));
        writer.Commit();
    }

    /// <summary>general.* keys then the architecture's hyperparameters, in the converter's order.</summary>
    public static IEnumerable<KeyValuePair<string, GgufValue>> Header(ModelConfig config, string name, uint fileType)
    {
        yield return new("general.architecture", GgufValue.Of(GgufArchitectures.Architecture(config)));
        yield return new("general.name", GgufValue.Of(name));
        yield return new("general.file_type", GgufValue.Of(fileType));
        foreach (var kv in GgufArchitectures.Hyperparameters(config)) yield return kv;
    }

    /// <summary>llama_ftype of a float file.</summary>
    static uint FileType(GgmlType type) => type switch { GgmlType.F32 => 0, GgmlType.F16 => 1, _ => 32 };

    public static void WriteConstants(GgufWriter writer, IEnumerable<GgufConstant> constants)
    {
        foreach (var k in constants)
            writer.Write(k.Name, System.Runtime.InteropServices.MemoryMarshal.AsBytes(k.Values.AsSpan()));
    }

    /// <summary>Writes one tensor through a codec, rows permuted by the mapping, a slab at a time; with an
    /// <paramref name="importance"/> per input column, through the codec's importance-weighted quantizer.</summary>
    public static void WriteTensor(GgufWriter writer, IWeightSource ckpt, GgufTensorMapping m, BlockCodec codec, float[]? importance = null)
    {
        if (!m.IsMatrix)
        {
            using var scope = NewDisposeScope();
            var v = ckpt.Load(m.Source, m.Shape).to(ScalarType.Float32).contiguous();
            var values = v.data<float>().ToArray();
            if (m.RowOrder is { } order) values = order.Select(r => values[r]).ToArray();
            if (m.Offset != 0)
                for (int i = 0; i < values.Length; i++) values[i] += m.Offset;
            Encode(writer, codec, values, values.Length, 1);
            return;
        }
        long rows = m.Shape[0], rowLength = m.Shape[1];
        long slab = Math.Max(1, SlabBytes / (rowLength * 4));
        for (long first = 0; first < rows; first += slab)
        {
            using var scope = NewDisposeScope();
            long count = Math.Min(slab, rows - first);
            var ids = m.RowOrder is { } order
                ? tensor(order.Skip((int)first).Take((int)count).Select(r => (long)r).ToArray())
                : Scalars.Range(first, first + count, ScalarType.Int64);
            var block = ckpt.LoadRows(m.Source, ids).to(ScalarType.Float32).contiguous();
            Encode(writer, codec, block.data<float>().ToArray(), (int)rowLength, (int)count, importance);
        }
    }

    static void Encode(GgufWriter writer, BlockCodec codec, float[] values, int rowLength, int rows, float[]? importance = null)
    {
        if (values.Any(v => !float.IsFinite(v)))
            throw new DotQuantException(ErrorCodes.NonFinite, $"{writer.Expecting?.Name}: the checkpoint holds NaN or Inf");
        writer.Append(codec.QuantizeRows(values.AsSpan(0, rowLength * rows), rowLength, importance));
    }
}
