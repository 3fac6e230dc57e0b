using System.IO.MemoryMappedFiles;
using System.Text.Json;
using DotQuant.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace DotQuant.Engine.IO;

/// <summary>One tensor's entry in a safetensors header. Offsets are absolute file offsets.</summary>
public sealed record SafeTensorInfo(string Name, SafeTensorsDType DType, long[] Shape, long Offset, long Length)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>A memory-mapped, fully validated safetensors file. Tensor bytes are read through a
/// short-lived view per tensor, so pages touched while loading are unmapped again and resident
/// memory holds the loaded tensors once, not twice.</summary>
public sealed class SafeTensorsFile : IDisposable
{
    /// <summary>Same cap as the reference implementation: a header above 100 MB is hostile.</summary>
    public const long MaxHeaderBytes = 100_000_000;

    readonly MemoryMappedFile? _map;
    readonly Dictionary<string, SafeTensorInfo> _tensors;

    public string Path { get; }
    public long FileLength { get; }
    public IReadOnlyDictionary<string, SafeTensorInfo> Tensors => _tensors;
    public IReadOnlyDictionary<string, string> Metadata { get; }

    SafeTensorsFile(string path, long length, MemoryMappedFile? map, Dictionary<string, SafeTensorInfo> tensors, Dictionary<string, string> metadata)
    {
        Path = path; FileLength = length; _map = map; _tensors = tensors; Metadata = metadata;
    }

    public static SafeTensorsFile Open(string path)
    {
        if (!File.Exists(path))
            throw new DotQuantException(ErrorCodes.FileNotFound, $"safetensors file not found: {path}", path);
        long length = new FileInfo(path).Length;
        if (length < 8)
            throw new DotQuantException(ErrorCodes.SafetensorsTruncated, $"file is {length} bytes, shorter than the 8-byte header length", path);

        byte[] header;
        using (var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read))
        {
            Span<byte> lenBytes = stackalloc byte[8];
            fs.ReadExactly(lenBytes);
            ulong n = BitConverter.ToUInt64(lenBytes);
            if (n > MaxHeaderBytes)
                throw new DotQuantException(ErrorCodes.SafetensorsHeaderLength, $"header length {n} exceeds the {MaxHeaderBytes}-byte cap", path);
            if ((long)n > length - 8)
                throw new DotQuantException(ErrorCodes.SafetensorsHeaderLength, $"header length {n} is longer than the file allows ({length - 8} bytes after the length prefix); the file is truncated or not safetensors", path);
            header = new byte[n];
            fs.ReadExactly(header);
        }

        long dataStart = 8 + header.Length;
        var (tensors, metadata) = ParseHeader(header, dataStart, length, path);
        // A file whose tensors are all empty has no bytes to map (and mapping 0 bytes maps everything).
        MemoryMappedFile? map = length > dataStart
            ? MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read)
            : null;
        return new SafeTensorsFile(path, length, map, tensors, metadata);
    }

    static (Dictionary<string, SafeTensorInfo>, Dictionary<string, string>) ParseHeader(byte[] header, long dataStart, long fileLength, string path)
    {
        JsonDocument doc;
        try
        {
            // JsonDocument checks a string's UTF-8 only when it is read (an InvalidOperationException then).
            if (!System.Text.Unicode.Utf8.IsValid(header))
                throw new DotQuantException(ErrorCodes.SafetensorsHeaderJson, "header is not valid UTF-8", path);
            doc = JsonDocument.Parse(header, new JsonDocumentOptions { MaxDepth = 8 });
        }
        catch (JsonException e)
        {
            throw new DotQuantException(ErrorCodes.SafetensorsHeaderJson, $"header is not well-formed JSON: {e.Message}", path);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new DotQuantException(ErrorCodes.SafetensorsHeaderJson, "header JSON is not an object", path);

            var tensors = new Dictionary<string, SafeTensorInfo>(StringComparer.Ordinal);
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            long dataLength = fileLength - dataStart;
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    if (prop.Value.ValueKind != JsonValueKind.Object)
                        throw Bad(ErrorCodes.SafetensorsHeaderJson, "__metadata__ is not an object");
                    foreach (var m in prop.Value.EnumerateObject())
                    {
                        if (m.Value.ValueKind != JsonValueKind.String)
                            throw Bad(ErrorCodes.SafetensorsHeaderJson, $"__metadata__ value '{m.Name}' is not a string");
                        metadata[m.Name] = m.Value.GetString()!;
                    }
                    continue;
                }
                if (tensors.ContainsKey(prop.Name))
                    throw Bad(ErrorCodes.SafetensorsHeaderJson, $"tensor '{prop.Name}' appears twice");
                tensors[prop.Name] = ParseEntry(prop, dataStart, dataLength);
            }

            // Spans must not overlap: sort by start and compare neighbours.
            var ordered = tensors.Values.Where(t => t.Length > 0).OrderBy(t => t.Offset).ToList();
            for (int i = 1; i < ordered.Count; i++)
                if (ordered[i].Offset < ordered[i - 1].Offset + ordered[i - 1].Length)
                    throw Bad(ErrorCodes.SafetensorsSpanOverlap, $"tensors '{ordered[i - 1].Name}' and '{ordered[i].Name}' overlap");
            return (tensors, metadata);
        }

        DotQuantException Bad(string code, string msg) => new(code, msg, path);

        SafeTensorInfo ParseEntry(JsonProperty prop, long dataStart, long dataLength)
        {
            string name = prop.Name;
            var v = prop.Value;
            if (v.ValueKind != JsonValueKind.Object)
                throw Bad(ErrorCodes.SafetensorsHeaderJson, $"entry '{name}' is not an object");
            if (!v.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String)
                throw Bad(ErrorCodes.SafetensorsHeaderJson, $"entry '{name}' has no string 'dtype'");
            if (!SafeTensorsDTypes.TryParse(dt.GetString()!, out var dtype))
                throw Bad(ErrorCodes.SafetensorsUnknownDtype, $"tensor '{name}' has unknown dtype '{dt.GetString()}' (known: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");
            if (!v.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array)
                throw Bad(ErrorCodes.SafetensorsHeaderJson, $"entry '{name}' has no 'shape' array");
            var shape = new List<long>();
            foreach (var d in sh.EnumerateArray())
            {
                if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim) || dim < 0)
                    throw Bad(ErrorCodes.SafetensorsHeaderJson, $"tensor '{name}' has a shape entry that is not a non-negative integer");
                shape.Add(dim);
            }
            if (!v.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
                throw Bad(ErrorCodes.SafetensorsHeaderJson, $"entry '{name}' has no two-element 'data_offsets'");
            if (!off[0].TryGetInt64(out long begin) || !off[1].TryGetInt64(out long end) || begin < 0 || end < begin)
                throw Bad(ErrorCodes.SafetensorsHeaderJson, $"tensor '{name}' has invalid data_offsets");
            if (end > dataLength)
                throw Bad(ErrorCodes.SafetensorsSpanOutside, $"tensor '{name}' spans bytes [{begin}, {end}) but the data section has {dataLength} bytes; the file is truncated");

            long expected;
            try
            {
                expected = checked(shape.Aggregate(1L, (a, b) => checked(a * b)) * dtype.ByteSize());
            }
            catch (OverflowException)
            {
                throw Bad(ErrorCodes.SafetensorsShapeMismatch, $"tensor '{name}' shape overflows");
            }
            if (expected != end - begin)
                throw Bad(ErrorCodes.SafetensorsShapeMismatch, $"tensor '{name}': shape [{string.Join(", ", shape)}] × {dtype} = {expected} bytes, but its span is {end - begin} bytes");
            return new SafeTensorInfo(name, dtype, shape.ToArray(), dataStart + begin, end - begin);
        }
    }

    public SafeTensorInfo Info(string name) =>
        _tensors.TryGetValue(name, out var info)
            ? info
            : throw new DotQuantException(ErrorCodes.WeightMissing, $"tensor '{name}' is not in {System.IO.Path.GetFileName(Path)}", Path);

    /// <summary>Loads a tensor in its stored dtype (a copy; the file can be closed afterwards).</summary>
    public Tensor Load(string name)
    {
        var info = Info(name);
        var t = torch.empty(info.Shape, info.DType.ToTorch());
        CopyInto(info, t);
        return t;
    }

    /// <summary>Copies the tensor's bytes into <paramref name="target"/> (contiguous, same byte size).</summary>
    public unsafe void CopyInto(SafeTensorInfo info, Tensor target)
    {
        if (info.Length == 0) return;
        if (_map is null) throw new InvalidOperationException("no data section mapped");
        // Spans are int-sized: copy big tensors in chunks of whole elements.
        const long chunk = 1L << 30;
        using var flat = target.view(-1);
        long elemSize = info.DType.ByteSize();
        long elementsPerChunk = chunk / elemSize;
        for (long first = 0; first < info.ElementCount; first += elementsPerChunk)
        {
            long count = Math.Min(elementsPerChunk, info.ElementCount - first);
            using var view = _map.CreateViewAccessor(info.Offset + first * elemSize, count * elemSize, MemoryMappedFileAccess.Read);
            byte* ptr = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref ptr);
            try
            {
                var source = new ReadOnlySpan<byte>(ptr + view.PointerOffset, checked((int)(count * elemSize)));
                if (count == info.ElementCount)
                {
                    source.CopyTo(flat.bytes);
                }
                else
                {
                    using var part = flat.narrow(0, first, count);
                    source.CopyTo(part.bytes);
                }
            }
            finally
            {
                view.SafeMemoryMappedViewHandle.ReleasePointer();
            }
        }
    }

    /// <summary>Copies rows <paramref name="rows"/> of a 2-D tensor into <paramref name="target"/> [rows, cols].</summary>
    public unsafe void CopyRows(SafeTensorInfo info, long[] rows, Tensor target)
    {
        if (rows.Length == 0 || info.Length == 0) return;
        if (_map is null) throw new InvalidOperationException("no data section mapped");
        foreach (var id in rows)
            if (id < 0 || id >= info.Shape[0])
                throw new DotQuantException(ErrorCodes.EvalData, $"row {id} is outside the {info.Shape[0]} rows of '{info.Name}' (a token id beyond the vocabulary?)", Path);
        long rowBytes = info.Shape[1] * info.DType.ByteSize();
        using var view = _map.CreateViewAccessor(info.Offset, info.Length, MemoryMappedFileAccess.Read);
        byte* ptr = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref ptr);
        try
        {
            var dest = target.bytes;
            for (int i = 0; i < rows.Length; i++)
                new ReadOnlySpan<byte>(ptr + view.PointerOffset + rows[i] * rowBytes, checked((int)rowBytes))
                    .CopyTo(dest.Slice(checked((int)(i * rowBytes))));
        }
        finally
        {
            view.SafeMemoryMappedViewHandle.ReleasePointer();
        }
    }

    /// <summary>Writes the tensor's stored bytes to <paramref name="destination"/> straight from the mapping.</summary>
    public unsafe void CopyTo(SafeTensorInfo info, Stream destination)
    {
        if (info.Length == 0) return;
        if (_map is null) throw new InvalidOperationException("no data section mapped");
        const long chunk = 1L << 26;
        for (long first = 0; first < info.Length; first += chunk)
        {
            long count = Math.Min(chunk, info.Length - first);
            using var view = _map.CreateViewAccessor(info.Offset + first, count, MemoryMappedFileAccess.Read);
            byte* ptr = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref ptr);
            try
            {
                destination.Write(new ReadOnlySpan<byte>(ptr + view.PointerOffset, checked((int)count)));
            }
            finally
            {
                view.SafeMemoryMappedViewHandle.ReleasePointer();
            }
        }
    }

    public void Dispose() => _map?.Dispose();
}
