using System.Text.Json.Nodes;
using Onnx;

namespace DotQuant.Engine.Onnx;

/// <summary>A weight kept in the external data file: where its bytes are, and how the graph declares it.</summary>
internal sealed record OnnxInitializer(string Name, TensorProto.Types.DataType Type, long[] Dims, long Offset, long Length)
{
    public TensorProto ToProto(string location)
    {
        var t = new TensorProto { Name = Name, DataType = (int)Type, DataLocation = TensorProto.Types.DataLocation.External };
        t.Dims.AddRange(Dims);
        t.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = location });
        t.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = Offset.ToString(System.Globalization.CultureInfo.InvariantCulture) });
        t.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = Length.ToString(System.Globalization.CultureInfo.InvariantCulture) });
        return t;
    }

    public JsonObject ToJson() => new()
    {
        ["name"] = Name, ["type"] = (int)Type, ["dims"] = new JsonArray(Dims.Select(d => (JsonNode)d).ToArray()),
        ["offset"] = Offset, ["length"] = Length,
    };

    public static OnnxInitializer FromJson(JsonNode j) => new((string)j["name"]!, (TensorProto.Types.DataType)(int)j["type"]!,
        j["dims"]!.AsArray().Select(d => (long)d!).ToArray(), (long)j["offset"]!, (long)j["length"]!);
}

/// <summary>The external data file (<c>model.onnx.data</c>) written as the pipeline hands tensors over:
/// tensors of 64 KiB or more at 4 KiB-aligned offsets (so ONNX Runtime can map them instead of copying),
/// smaller ones (norms, biases, scales of small layers) at 64-byte offsets, which keeps a small model's
/// file from being mostly padding. A
/// checkpoint flushes it and records its length; resuming truncates to that length, dropping a block
/// that was half written when the run stopped.</summary>
internal sealed class OnnxDataFile : IDisposable
{
    const int PageAlignment = 4096, SmallAlignment = 64, PageAlignedFrom = 64 << 10;

    readonly FileStream _stream;
    readonly List<OnnxInitializer> _initializers;

    public OnnxDataFile(string path, JsonNode? state)
    {
        if (state is null)
        {
            _stream = new FileStream(path, FileMode.Create, FileAccess.ReadWrite, FileShare.Read);
            _initializers = [];
            return;
        }
        long length = (long)state["length"]!;
        _stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.Read);
        if (_stream.Length < length)
        {
            _stream.Dispose();
            throw new InvalidDataException($"{path}: {_stream.Length} bytes, the checkpoint recorded {length}");
        }
        _stream.SetLength(length);
        _stream.Position = length;
        _initializers = state["initializers"]!.AsArray().Select(OnnxInitializer.FromJson!).ToList();
    }

    public IReadOnlyList<OnnxInitializer> Initializers => _initializers;
    public string Path => _stream.Name;

    public OnnxInitializer Add(string name, TensorProto.Types.DataType type, long[] dims, ReadOnlySpan<byte> bytes)
    {
        int alignment = bytes.Length >= PageAlignedFrom ? PageAlignment : SmallAlignment;
        long offset = (_stream.Position + alignment - 1) / alignment * alignment;
        if (offset > _stream.Position) _stream.Write(new byte[offset - _stream.Position]);
        _stream.Write(bytes);
        var init = new OnnxInitializer(name, type, dims, offset, bytes.Length);
        _initializers.Add(init);
        return init;
    }

    public JsonObject Checkpoint()
    {
        _stream.Flush(flushToDisk: true);
        return new JsonObject { ["length"] = _stream.Length, ["initializers"] = new JsonArray(_initializers.Select(i => (JsonNode)i.ToJson()).ToArray()) };
    }

    public void Dispose() => _stream.Dispose();
}
