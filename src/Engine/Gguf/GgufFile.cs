using System.Text;
using DotQuant.Runtime;
using Microsoft.Win32.SafeHandles;

namespace DotQuant.Engine.Gguf;

/// <summary>A validated GGUF file (v2 or v3, little-endian; ours or llama.cpp's). Everything the header
/// declares is checked against the file before it is believed: counts and string lengths against the
/// bytes left, value and tensor types against the known ones, dims, type × shape = bytes, offsets
/// aligned, inside the data section and not overlapping. Tensor bytes are read on demand with
/// positional reads, so an open file costs its header only.</summary>
public sealed class GgufFile : IDisposable
{
    /// <summary>Strings and arrays above these are hostile (the largest real vocabularies hold ~260k tokens).</summary>
    const long MaxStringBytes = 1L << 26, MaxArrayLength = 1L << 26;

    readonly SafeFileHandle _handle;
    readonly Dictionary<string, GgufTensorInfo> _byName;

    public string Path { get; }
    public uint Version { get; }
    public long FileLength { get; }
    public int Alignment { get; }
    public long DataOffset { get; }
    /// <summary>Metadata in file order.</summary>
    public IReadOnlyList<KeyValuePair<string, GgufValue>> Metadata { get; }
    /// <summary>Tensors in file order.</summary>
    public IReadOnlyList<GgufTensorInfo> Tensors { get; }

    GgufFile(string path, SafeFileHandle handle, uint version, long length, int alignment, long dataOffset,
        List<KeyValuePair<string, GgufValue>> metadata, List<GgufTensorInfo> tensors)
    {
        Path = path; _handle = handle; Version = version; FileLength = length; Alignment = alignment; DataOffset = dataOffset;
        Metadata = metadata; Tensors = tensors;
        _byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }

    public GgufValue? this[string key] => Metadata.FirstOrDefault(p => p.Key == key).Value;

    public GgufTensorInfo? Tensor(string name) => _byName.GetValueOrDefault(name);

    public static GgufFile Open(string path)
    {
        if (!File.Exists(path))
            throw new DotQuantException(ErrorCodes.FileNotFound, $"GGUF file not found: {path}", path);
        var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        try
        {
            long length = RandomAccess.GetLength(handle);
            var r = new HeaderReader(handle, length, path);
            return r.Read();
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Reads rows [first, first + count) of a tensor's bytes (row = Dims[0] elements).</summary>
    public void ReadRows(GgufTensorInfo t, long first, long count, Span<byte> destination)
    {
        long rowBytes = GgmlTypeInfo.Of(t.Type).RowBytes(t.RowLength);
        if (first < 0 || count < 0 || first + count > t.Rows)
            throw new ArgumentOutOfRangeException(nameof(first), $"rows [{first}, {first + count}) outside {t.Name}'s {t.Rows}");
        if (destination.Length != rowBytes * count)
            throw new ArgumentException($"destination is {destination.Length} bytes, {rowBytes * count} expected");
        long at = DataOffset + t.Offset + first * rowBytes;
        while (destination.Length > 0)
        {
            int n = RandomAccess.Read(_handle, destination, at);
            if (n == 0) throw new DotQuantException(ErrorCodes.GgufTruncated, $"{t.Name}: the file ended while reading it (was it truncated after opening?)", Path);
            destination = destination[n..];
            at += n;
        }
    }

    public byte[] ReadAll(GgufTensorInfo t)
    {
        var bytes = new byte[t.Bytes];
        ReadRows(t, 0, t.Rows, bytes);
        return bytes;
    }

    /// <summary>A whole tensor decoded to fp32 with llama.cpp's arithmetic (row-major, ggml order).</summary>
    public float[] Decode(GgufTensorInfo t) => Blocks.BlockCodec.For(t.Type).DequantizeRows(ReadAll(t), (int)t.RowLength);

    public void Dispose() => _handle.Dispose();

    /// <summary>A bounds-checked little-endian cursor over the header.</summary>
    sealed class HeaderReader(SafeFileHandle handle, long length, string path)
    {
        readonly byte[] _buffer = new byte[1 << 16];
        long _bufferStart = 0;
        int _bufferLength = 0;
        long _position = 0;

        public GgufFile Read()
        {
            if (length < 24) throw Truncated($"the file is {length} bytes, shorter than a GGUF header (24)");
            var magic = Bytes(4);
            if (!magic.AsSpan().SequenceEqual("GGUF"u8))
                throw Bad(ErrorCodes.GgufHeader, $"not a GGUF file (magic {Convert.ToHexString(magic)}, expected 47475546 'GGUF')");
            uint version = U32();
            if (version is 0x03000000 or 0x02000000)
                throw Bad(ErrorCodes.GgufHeader, "big-endian GGUF files are not supported");
            if (version is not (2 or 3))
                throw Bad(ErrorCodes.GgufHeader, $"GGUF version {version} is not supported (2 and 3 are)");
            long tensorCount = Count(U64(), 8 + 4 + 8 + 4 + 8, "tensor count");
            long kvCount = Count(U64(), 8 + 4 + 1, "metadata count");

            var metadata = new List<KeyValuePair<string, GgufValue>>();
            var keys = new HashSet<string>(StringComparer.Ordinal);
            for (long i = 0; i < kvCount; i++)
            {
                string key = String("metadata key");
                if (!keys.Add(key)) throw Bad(ErrorCodes.GgufHeader, $"metadata key '{key}' appears twice");
                metadata.Add(new(key, Value(key)));
            }

            int alignment = GgufWriter.DefaultAlignment;
            if (metadata.FirstOrDefault(p => p.Key == "general.alignment").Value is { } a)
            {
                if (a.Type != GgufValueType.UInt32 || a.AsInteger() is var n && (n == 0 || (n & (n - 1)) != 0))
                    throw Bad(ErrorCodes.GgufHeader, $"general.alignment must be a power-of-two uint32, found {a.Type} {a}");
                alignment = (int)a.AsInteger();
            }

            var tensors = new List<GgufTensorInfo>();
            var names = new HashSet<string>(StringComparer.Ordinal);
            for (long i = 0; i < tensorCount; i++)
            {
                string name = String("tensor name");
                if (Encoding.UTF8.GetByteCount(name) > GgufWriter.MaxNameBytes)
                    throw Bad(ErrorCodes.GgufTensor, $"tensor name '{name[..Math.Min(name.Length, 40)]}...' is longer than {GgufWriter.MaxNameBytes} bytes");
                if (!names.Add(name)) throw Bad(ErrorCodes.GgufTensor, $"tensor '{name}' appears twice");
                uint nDims = U32();
                if (nDims is < 1 or > GgufWriter.MaxDims) throw Bad(ErrorCodes.GgufTensor, $"tensor '{name}' has {nDims} dims (1 to {GgufWriter.MaxDims} allowed)");
                var dims = new long[nDims];
                long elements = 1;
                for (int d = 0; d < nDims; d++)
                {
                    ulong v = U64();
                    if (v == 0 || v > long.MaxValue) throw Bad(ErrorCodes.GgufTensor, $"tensor '{name}' dim {d} is {v}");
                    dims[d] = (long)v;
                    if (elements > long.MaxValue / dims[d]) throw Bad(ErrorCodes.GgufTensor, $"tensor '{name}' has more elements than fit in 64 bits");
                    elements *= dims[d];
                }
                uint type = U32();
                if (!GgmlTypeInfo.TryGet(type, out var info))
                    throw Bad(ErrorCodes.GgufTensor, $"tensor '{name}' has ggml type {type}, which this version does not know");
                if (dims[0] % info.BlockSize != 0)
                    throw Bad(ErrorCodes.GgufTensor, $"tensor '{name}' has rows of {dims[0]}, not a multiple of {info.Name}'s block of {info.BlockSize}");
                ulong offset = U64();
                if (offset % (ulong)alignment != 0) throw Bad(ErrorCodes.GgufTensor, $"tensor '{name}' starts at {offset}, not a multiple of the alignment {alignment}");
                if (offset > (ulong)length) throw Truncated($"tensor '{name}' starts at {offset}, beyond the file's {length} bytes");
                tensors.Add(new GgufTensorInfo(name, dims, info.Type, (long)offset));
            }

            long dataOffset = (_position + alignment - 1) / alignment * alignment;
            if (tensors.Count > 0 && dataOffset > length) throw Truncated($"the data section would start at {dataOffset}, beyond the file's {length} bytes");
            long dataLength = length - dataOffset;
            foreach (var t in tensors)
            {
                long bytes = (long)Math.Min((decimal)long.MaxValue, (decimal)GgmlTypeInfo.Of(t.Type).RowBytes(t.RowLength) * t.Rows);
                if (t.Offset > dataLength || bytes > dataLength - t.Offset)
                    throw Truncated($"tensor '{t.Name}' ({t.Type} [{string.Join(", ", t.Dims)}], {bytes} bytes at {t.Offset}) extends past the end of the file");
            }
            var ordered = tensors.OrderBy(t => t.Offset).ToList();
            for (int i = 1; i < ordered.Count; i++)
                if (ordered[i].Offset < ordered[i - 1].Offset + ordered[i - 1].Bytes)
                    throw Bad(ErrorCodes.GgufTensor, $"tensors '{ordered[i - 1].Name}' and '{ordered[i].Name}' overlap");
            return new GgufFile(path, handle, version, length, alignment, dataOffset, metadata, tensors);
        }

        GgufValue Value(string key)
        {
            uint raw = U32();
            if (raw > (uint)GgufValueType.Float64) throw Bad(ErrorCodes.GgufHeader, $"metadata '{key}' has value type {raw}, which GGUF does not define");
            var type = (GgufValueType)raw;
            if (type != GgufValueType.Array) return GgufValue.Scalar(type, Scalar(type, key));
            uint rawElement = U32();
            if (rawElement > (uint)GgufValueType.Float64) throw Bad(ErrorCodes.GgufHeader, $"metadata '{key}' is an array of type {rawElement}, which GGUF does not define");
            var element = (GgufValueType)rawElement;
            if (element == GgufValueType.Array) throw Bad(ErrorCodes.GgufHeader, $"metadata '{key}' is an array of arrays, which llama.cpp does not read");
            ulong count = U64();
            long minimum = element == GgufValueType.String ? 8 : ScalarSize(element);
            if (count > MaxArrayLength || (long)count * minimum > length - _position)
                throw Truncated($"metadata '{key}' declares {count} {element} elements, more than the file holds");
            var values = System.Array.CreateInstance(ClrType(element), (int)count);
            for (int i = 0; i < (int)count; i++) values.SetValue(Scalar(element, key), i);
            return GgufValue.ArrayOf(element, values);
        }

        object Scalar(GgufValueType type, string key) => type switch
        {
            GgufValueType.UInt8 => Bytes(1)[0],
            GgufValueType.Int8 => (sbyte)Bytes(1)[0],
            GgufValueType.UInt16 => BitConverter.ToUInt16(Bytes(2)),
            GgufValueType.Int16 => BitConverter.ToInt16(Bytes(2)),
            GgufValueType.UInt32 => U32(),
            GgufValueType.Int32 => BitConverter.ToInt32(Bytes(4)),
            GgufValueType.Float32 => BitConverter.ToSingle(Bytes(4)),
            GgufValueType.Bool => Bytes(1)[0] switch
            {
                0 => false, 1 => true,
                var b => throw Bad(ErrorCodes.GgufHeader, $"metadata '{key}' holds bool byte {b} (0 or 1 allowed)"),
            },
            GgufValueType.String => String($"metadata '{key}'"),
            GgufValueType.UInt64 => U64(),
            GgufValueType.Int64 => BitConverter.ToInt64(Bytes(8)),
            GgufValueType.Float64 => BitConverter.ToDouble(Bytes(8)),
            _ => throw Bad(ErrorCodes.GgufHeader, $"metadata '{key}' has value type {type} where a scalar is expected"),
        };

        static int ScalarSize(GgufValueType t) => t switch
        {
            GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.Bool => 1,
            GgufValueType.UInt16 or GgufValueType.Int16 => 2,
            GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.Float32 => 4,
            _ => 8,
        };

        static Type ClrType(GgufValueType t) => t switch
        {
            GgufValueType.UInt8 => typeof(byte), GgufValueType.Int8 => typeof(sbyte), GgufValueType.UInt16 => typeof(ushort),
            GgufValueType.Int16 => typeof(short), GgufValueType.UInt32 => typeof(uint), GgufValueType.Int32 => typeof(int),
            GgufValueType.Float32 => typeof(float), GgufValueType.Bool => typeof(bool), GgufValueType.String => typeof(string),
            GgufValueType.UInt64 => typeof(ulong), GgufValueType.Int64 => typeof(long), _ => typeof(double),
        };

        long Count(ulong n, long minimumBytesEach, string what)
        {
            if (n > (ulong)(length / minimumBytesEach)) throw Truncated($"the {what} is {n}, more than a {length}-byte file can hold");
            return (long)n;
        }

        string String(string what)
        {
            ulong n = U64();
            if (n > MaxStringBytes || (long)n > length - _position)
                throw Truncated($"a {what} declares {n} bytes, more than the file holds at offset {_position}");
            var bytes = Bytes((int)n);
            try { return new UTF8Encoding(false, true).GetString(bytes); }
            catch (DecoderFallbackException) { return Encoding.UTF8.GetString(bytes); }
        }

        uint U32() => BitConverter.ToUInt32(Bytes(4));
        ulong U64() => BitConverter.ToUInt64(Bytes(8));

        byte[] Bytes(int n)
        {
            if (n > length - _position) throw Truncated($"the header ends at offset {length}, {n} bytes needed at {_position}");
            var result = new byte[n];
            int done = 0;
            while (done < n)
            {
                if (_position < _bufferStart || _position >= _bufferStart + _bufferLength) Fill();
                int offset = (int)(_position - _bufferStart);
                int take = Math.Min(n - done, _bufferLength - offset);
                System.Array.Copy(_buffer, offset, result, done, take);
                done += take;
                _position += take;
            }
            return result;
        }

        void Fill()
        {
            _bufferStart = _position;
            _bufferLength = RandomAccess.Read(handle, _buffer, _position);
            if (_bufferLength == 0) throw Truncated($"the file ended at offset {_position}");
        }

        DotQuantException Truncated(string message) => Bad(ErrorCodes.GgufTruncated, message + " (truncated or not GGUF)");
        DotQuantException Bad(string code, string message) => new(code, message, path);
    }
}
