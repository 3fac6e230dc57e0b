using System.Text;
using DotQuant.Engine.IO;
using DotQuant.Runtime;

namespace DotQuant.Engine.Gguf;

/// <summary>Where a resumable writer stands: bytes durable and the next tensor to write.</summary>
public readonly record struct GgufWriterState(long Length, int Tensor);

/// <summary>A tensor the writer is told about before any data: name, ggml dims (row length first), type.</summary>
public sealed record GgufTensorSpec(string Name, long[] Dims, GgmlType Type)
{
    public long Bytes => GgmlTypeInfo.Of(Type).RowBytes(Dims[0]) * Dims.Skip(1).Aggregate(1L, (a, b) => a * b);
}

/// <summary>Writes a GGUF v3 file as a stream: the header (metadata in the given order, tensor infos in
/// the declared order, offsets aligned) goes out first, then each tensor's bytes are appended as they are
/// produced (a block at a time), padded with zeros to the alignment, exactly as llama.cpp lays files out.
/// Same inputs, same bytes. The file is assembled under a temporary name and renamed on
/// <see cref="Commit"/>; disposing without committing deletes it, so a failure never leaves a torn file.</summary>
public sealed class GgufWriter : IDisposable
{
    public const uint Version = 3;
    public const int DefaultAlignment = 32;
    /// <summary>GGML_MAX_NAME is 64 bytes including the terminating zero.</summary>
    public const int MaxNameBytes = 63;
    public const int MaxDims = 4;

    readonly string _path, _temp;
    readonly FileStream _stream;
    readonly IReadOnlyList<GgufTensorSpec> _tensors;
    readonly int _alignment;
    int _current;
    long _writtenOfCurrent;
    bool _committed;
    readonly bool _ownsTemp;

    public GgufWriter(string path, IEnumerable<KeyValuePair<string, GgufValue>> metadata, IReadOnlyList<GgufTensorSpec> tensors, int alignment = DefaultAlignment)
        : this(path, null, metadata, tensors, alignment, null) { }

    /// <param name="temp">Where the file is assembled (beside the destination when null). A run that can be
    /// resumed names it, so the next process finds it.</param>
    /// <param name="resume">Continue the file at <paramref name="temp"/> from a <see cref="Checkpoint"/>: its
    /// header must be exactly the one these arguments produce (same tensors, same metadata).</param>
    public GgufWriter(string path, string? temp, IEnumerable<KeyValuePair<string, GgufValue>> metadata, IReadOnlyList<GgufTensorSpec> tensors,
        int alignment = DefaultAlignment, GgufWriterState? resume = null)
    {
        if (alignment <= 0 || (alignment & (alignment - 1)) != 0)
            throw new ArgumentException($"alignment {alignment} is not a power of two", nameof(alignment));
        Validate(tensors, path);
        _path = Path.GetFullPath(path);
        _temp = temp is null ? _path + $".tmp-{Environment.ProcessId}" : Path.GetFullPath(temp);
        _ownsTemp = temp is null;
        _tensors = tensors;
        _alignment = alignment;
        var header = Header(metadata, tensors, alignment);
        try
        {
            if (resume is { } r)
            {
                _stream = new FileStream(_temp, FileMode.Open, FileAccess.ReadWrite, FileShare.None, 1 << 20);
                var existing = new byte[header.Length];
                if (r.Length < header.Length || _stream.Length < r.Length || _stream.Read(existing) != existing.Length || !existing.AsSpan().SequenceEqual(header)
                    || r.Tensor < 0 || r.Tensor > tensors.Count)
                    throw new DotQuantException(ErrorCodes.GgufWrite, $"{_temp} does not continue this output (its header or length differs); run without --resume", _temp);
                _stream.SetLength(r.Length);
                _stream.Seek(r.Length, SeekOrigin.Begin);
                _current = r.Tensor;
            }
            else
            {
                _stream = new FileStream(_temp, FileMode.Create, FileAccess.ReadWrite, FileShare.None, 1 << 20);
                _stream.Write(header);
            }
            SkipEmpty();
        }
        catch (IOException e)
        {
            _stream?.Dispose();
            if (resume is null) TryDelete(_temp);
            throw new DotQuantException(ErrorCodes.GgufWrite, $"could not write {path}: {e.Message}", path, e);
        }
    }

    /// <summary>The file's header: magic, version, counts, metadata, tensor infos (offsets aligned), padding.</summary>
    static byte[] Header(IEnumerable<KeyValuePair<string, GgufValue>> metadata, IReadOnlyList<GgufTensorSpec> tensors, int alignment)
    {
        var kv = metadata.ToList();
        if (alignment != DefaultAlignment && !kv.Any(p => p.Key == "general.alignment"))
            kv.Add(new("general.alignment", GgufValue.Of((uint)alignment)));
        using var ms = new MemoryStream();
        var w = new BinaryWriter(ms, Encoding.UTF8, leaveOpen: true);
        w.Write("GGUF"u8);
        w.Write(Version);
        w.Write((ulong)tensors.Count);
        w.Write((ulong)kv.Count);
        var keys = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (key, value) in kv)
        {
            if (!keys.Add(key)) throw new ArgumentException($"metadata key '{key}' appears twice");
            WriteString(w, key);
            w.Write((uint)value.Type);
            WriteValue(w, value);
        }
        long offset = 0;
        foreach (var t in tensors)
        {
            WriteString(w, t.Name);
            w.Write((uint)t.Dims.Length);
            foreach (var d in t.Dims) w.Write((ulong)d);
            w.Write((uint)t.Type);
            w.Write((ulong)offset);
            offset += (t.Bytes + alignment - 1) / alignment * alignment;
        }
        w.Flush();
        long pad = (ms.Length + alignment - 1) / alignment * alignment - ms.Length;
        w.Write(new byte[pad]);
        w.Flush();
        return ms.ToArray();
    }

    /// <summary>Everything appended so far made durable (only between tensors); the state resumes here.</summary>
    public GgufWriterState Checkpoint()
    {
        if (_writtenOfCurrent != 0) throw new InvalidOperationException($"'{Expecting?.Name}' is half written");
        Guard(() => _stream.Flush(true));
        return new GgufWriterState(_stream.Position, _current);
    }

    /// <summary>The tensor whose bytes <see cref="Append"/> expects next, or null when all are written.</summary>
    public GgufTensorSpec? Expecting => _current < _tensors.Count ? _tensors[_current] : null;

    /// <summary>Appends bytes of the current tensor (any number of calls per tensor, in declared order).</summary>
    public void Append(ReadOnlySpan<byte> bytes)
    {
        while (bytes.Length > 0)
        {
            var t = Expecting ?? throw new InvalidOperationException("every declared tensor is already written");
            int take = (int)Math.Min(bytes.Length, t.Bytes - _writtenOfCurrent);
            try { _stream.Write(bytes[..take]); }
            catch (IOException e) { throw new DotQuantException(ErrorCodes.GgufWrite, $"could not write {_path}: {e.Message}", _path, e); }
            _writtenOfCurrent += take;
            bytes = bytes[take..];
            if (_writtenOfCurrent == t.Bytes) NextTensor();
        }
    }

    /// <summary>Appends a whole tensor, checking that it is the one expected.</summary>
    public void Write(string name, ReadOnlySpan<byte> bytes)
    {
        var t = Expecting ?? throw new InvalidOperationException($"'{name}' was not declared (every declared tensor is written)");
        if (t.Name != name || _writtenOfCurrent != 0)
            throw new InvalidOperationException($"'{name}' written where '{t.Name}' is expected");
        if (bytes.Length != t.Bytes)
            throw new InvalidOperationException($"'{name}' is {bytes.Length} bytes, declared {t.Bytes} ({t.Type} [{string.Join(", ", t.Dims)}])");
        Append(bytes);
    }

    /// <summary>Flushes to disk and puts the file into place: renamed when the temporary file is our own; a
    /// resumable run's named file stays where it is and the destination becomes a second name for it (a
    /// hard link, or a copy), because a run stopped between this point and its publication resumes from
    /// the named file.</summary>
    public void Commit()
    {
        if (Expecting is { } t) throw new InvalidOperationException($"tensor '{t.Name}' and later ones were never written");
        Guard(() =>
        {
            _stream.Flush(true);
            _stream.Dispose();
            if (_ownsTemp) File.Move(_temp, _path, overwrite: true);
            else FileLinks.LinkOrCopy(_temp, _path);
        });
        _committed = true;
    }

    /// <summary>Without <see cref="Commit"/>: a temporary file of our own is deleted; a named one (a
    /// resumable run's) is left for the next process.</summary>
    public void Dispose()
    {
        if (_committed) return;
        _stream.Dispose();
        if (_ownsTemp) TryDelete(_temp);
    }

    void NextTensor()
    {
        PadStream();
        _current++;
        _writtenOfCurrent = 0;
        SkipEmpty();
    }

    void SkipEmpty()
    {
        while (_current < _tensors.Count && _tensors[_current].Bytes == 0) _current++;
    }

    long Pad(long n) => (n + _alignment - 1) / _alignment * _alignment;

    void PadStream()
    {
        long pad = Pad(_stream.Position) - _stream.Position;
        if (pad > 0) Guard(() => _stream.Write(new byte[pad]));
    }

    void Guard(Action io)
    {
        try { io(); }
        catch (IOException e) { throw new DotQuantException(ErrorCodes.GgufWrite, $"could not write {_path}: {e.Message}", _path, e); }
    }

    static void Validate(IReadOnlyList<GgufTensorSpec> tensors, string path)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var t in tensors)
        {
            if (Encoding.UTF8.GetByteCount(t.Name) > MaxNameBytes)
                throw new DotQuantException(ErrorCodes.GgufUnsupported, $"tensor name '{t.Name}' is longer than llama.cpp's {MaxNameBytes} bytes", path);
            if (!names.Add(t.Name)) throw new ArgumentException($"tensor '{t.Name}' is declared twice");
            if (t.Dims.Length is < 1 or > MaxDims || t.Dims.Any(d => d <= 0))
                throw new DotQuantException(ErrorCodes.GgufUnsupported, $"tensor '{t.Name}' has dims [{string.Join(", ", t.Dims)}]; GGUF holds 1 to {MaxDims} positive dims", path);
            var info = GgmlTypeInfo.Of(t.Type);
            if (t.Dims[0] % info.BlockSize != 0)
                throw new DotQuantException(ErrorCodes.GgufUnsupported, $"tensor '{t.Name}' has rows of {t.Dims[0]}, not a multiple of {info.Name}'s block of {info.BlockSize}", path);
        }
    }

    static void WriteString(BinaryWriter w, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    static void WriteValue(BinaryWriter w, GgufValue v)
    {
        if (v.Type != GgufValueType.Array)
        {
            WriteScalar(w, v.Type, v.Value);
            return;
        }
        var items = (Array)v.Value;
        w.Write((uint)v.ElementType);
        w.Write((ulong)items.Length);
        foreach (var item in items) WriteScalar(w, v.ElementType, item!);
    }

    static void WriteScalar(BinaryWriter w, GgufValueType type, object value)
    {
        switch (type)
        {
            case GgufValueType.UInt8: w.Write((byte)value); break;
            case GgufValueType.Int8: w.Write((sbyte)value); break;
            case GgufValueType.UInt16: w.Write((ushort)value); break;
            case GgufValueType.Int16: w.Write((short)value); break;
            case GgufValueType.UInt32: w.Write((uint)value); break;
            case GgufValueType.Int32: w.Write((int)value); break;
            case GgufValueType.Float32: w.Write((float)value); break;
            case GgufValueType.Bool: w.Write((byte)((bool)value ? 1 : 0)); break;
            case GgufValueType.String: WriteString(w, (string)value); break;
            case GgufValueType.UInt64: w.Write((ulong)value); break;
            case GgufValueType.Int64: w.Write((long)value); break;
            case GgufValueType.Float64: w.Write((double)value); break;
            default: throw new ArgumentException($"cannot write a GGUF {type} here");
        }
    }

    static void TryDelete(string path)
    {
        try { File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
