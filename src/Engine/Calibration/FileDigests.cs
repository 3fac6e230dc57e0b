using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text.Json;

namespace DotQuant.Engine.Calibration;

/// <summary>SHA-256 of input files, memoized by (full path, size, last write time) in a small JSON
/// file in the cache folder, so an incremental build of a multi-gigabyte model does not re-read
/// every byte each time a timestamp moves. A file rewritten with the same size and timestamp is
/// not noticed — the same trade-off every timestamp-based build makes.</summary>
public sealed class FileDigests
{
    readonly string? _store;
    readonly ConcurrentDictionary<string, string> _known = new(StringComparer.Ordinal);
    bool _dirty;

    public FileDigests(string? cacheDir)
    {
        if (cacheDir is null) return;
        _store = Path.Combine(cacheDir, "file-digests.json");
        try
        {
            if (File.Exists(_store))
                foreach (var (k, v) in JsonSerializer.Deserialize<Dictionary<string, string>>(File.ReadAllText(_store)) ?? [])
                    _known[k] = v;
        }
        catch (Exception e) when (e is JsonException or IOException)
        {
            // A damaged memo only costs re-hashing.
        }
    }

    public string Of(string path)
    {
        var info = new FileInfo(path);
        string key = $"{info.FullName}|{info.Length}|{info.LastWriteTimeUtc.Ticks}";
        if (_known.TryGetValue(key, out var digest)) return digest;
        using (var fs = File.OpenRead(path)) digest = Convert.ToHexStringLower(SHA256.HashData(fs));
        _known[key] = digest;
        _dirty = true;
        return digest;
    }

    /// <summary>Writes the memo (temp file + rename; concurrent writers each leave a valid file).</summary>
    public void Save()
    {
        if (_store is null || !_dirty) return;
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(_store)!);
            string tmp = _store + $".tmp-{Environment.ProcessId}";
            File.WriteAllText(tmp, JsonSerializer.Serialize(_known.OrderBy(kv => kv.Key, StringComparer.Ordinal).ToDictionary()));
            File.Move(tmp, _store, overwrite: true);
        }
        catch (IOException)
        {
        }
    }
}
