using System.Text;
using System.Text.Json;
using DotQuant.Runtime;
using static TorchSharp.torch;

namespace DotQuant.Engine.IO;

/// <summary>Writes safetensors with deterministic bytes: tensors sorted by name (ordinal), compact
/// header JSON, header padded with spaces so the data section starts 8-byte aligned, data in the
/// same order. The file is written to a temp path and renamed, so a crash never leaves a torn file.</summary>
public static class SafeTensorsWriter
{
    public static void Write(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var names = tensors.Keys.Order(StringComparer.Ordinal).ToList();
        var header = BuildHeader(names.Select(n => (n, SafeTensorsDTypes.FromTorch(tensors[n].dtype), tensors[n].shape, tensors[n].NumberOfElements * tensors[n].ElementSize)), metadata);

        string full = Path.GetFullPath(path);
        string tmp = full + $".tmp-{Environment.ProcessId}";
        try
        {
            using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
            {
                fs.Write(BitConverter.GetBytes((ulong)header.Length));
                fs.Write(header);
                foreach (var n in names)
                {
                    var t = tensors[n];
                    if (t.device_type != TorchSharp.DeviceType.CPU)
                        throw new ArgumentException($"tensor '{n}' is not on the CPU");
                    using var c = t.contiguous();
                    WriteBytes(fs, c);
                }
                fs.Flush(true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch (IOException e)
        {
            TryDelete(tmp);
            throw new DotQuantException(ErrorCodes.SafetensorsWrite, $"could not write {path}: {e.Message}", path, e);
        }
        catch
        {
            TryDelete(tmp);
            throw;
        }
    }

    /// <summary>A contiguous CPU tensor's bytes, in chunks below 2 GB.</summary>
    internal static void WriteBytes(Stream s, Tensor t)
    {
        long total = t.NumberOfElements * t.ElementSize;
        if (total == 0) return;
        if (total <= int.MaxValue)
        {
            s.Write(t.bytes);
            return;
        }
        using var flat = t.view(-1);
        long perChunk = (1L << 30) / t.ElementSize;
        for (long first = 0; first < t.NumberOfElements; first += perChunk)
        {
            using var part = flat.narrow(0, first, Math.Min(perChunk, t.NumberOfElements - first));
            s.Write(part.bytes);
        }
    }

    /// <summary>The header bytes (without the 8-byte length), padded to make 8 + length a multiple of 8.</summary>
    internal static byte[] BuildHeader(IEnumerable<(string Name, SafeTensorsDType DType, long[] Shape, long Bytes)> entries,
        IReadOnlyDictionary<string, string>? metadata)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = false, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var k in metadata.Keys.Order(StringComparer.Ordinal))
                    w.WriteString(k, metadata[k]);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var (name, dtype, shape, bytes) in entries)
            {
                w.WriteStartObject(name);
                w.WriteString("dtype", dtype.Name());
                w.WriteStartArray("shape");
                foreach (var d in shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + bytes);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += bytes;
            }
            w.WriteEndObject();
        }
        var json = ms.ToArray();
        int padded = (json.Length + 7) / 8 * 8;
        var header = new byte[padded];
        json.CopyTo(header, 0);
        for (int i = json.Length; i < padded; i++) header[i] = (byte)' ';
        return header;
    }

    static void TryDelete(string p)
    {
        try { if (File.Exists(p)) File.Delete(p); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
