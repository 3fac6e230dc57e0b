using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using DotQuant.Runtime;
using static TorchSharp.torch;

namespace DotQuant.Engine.IO;

/// <summary>Writes a model's tensors as they are produced, block after block, into shards of at most
/// <see cref="ShardBytes"/> each (a tensor larger than that gets a shard of its own). A shard's data
/// goes to a body file in the scratch folder; when the shard is full its header (entries in arrival
/// order, offsets contiguous, 8-byte aligned) and body become one safetensors file. <see cref="Finish"/>
/// names the files as transformers does — <c>model.safetensors</c> for one shard, else
/// <c>model-0000k-of-0000n.safetensors</c> with <c>model.safetensors.index.json</c> — so the bytes only
/// depend on the tensors and their order. <see cref="Commit"/> returns a state from which
/// <see cref="Resume"/> continues after a crash as if nothing had happened.</summary>
public sealed class ShardedSafeTensorsWriter : IDisposable
{
    public sealed record Entry(string Name, [property: JsonConverter(typeof(JsonStringEnumConverter<SafeTensorsDType>))] SafeTensorsDType DType, long[] Shape, long Bytes);

    /// <summary>What <see cref="Resume"/> needs: the closed shards' entries and the open shard's
    /// entries (its body holds exactly their bytes).</summary>
    public sealed record State(List<List<Entry>> Closed, List<Entry> Open)
    {
        public JsonNode ToJson() => JsonSerializer.SerializeToNode(this)!;
        public static State FromJson(JsonNode node) => node.Deserialize<State>() ?? throw new InvalidDataException("writer state is empty");
    }

    static readonly Dictionary<string, string> Metadata = new() { ["format"] = "pt", ["quantized_by"] = "dotquant" };

    readonly string _scratch;
    readonly List<List<Entry>> _closed = [];
    List<Entry> _open = [];
    long _openBytes;
    FileStream? _body;
    int _bodiesToDelete;

    public long ShardBytes { get; }
    /// <summary>Bytes of tensor data written so far.</summary>
    public long DataBytes => _closed.Sum(s => s.Sum(e => e.Bytes)) + _openBytes;

    public ShardedSafeTensorsWriter(string scratch, long shardBytes)
    {
        if (shardBytes <= 0) throw new ArgumentOutOfRangeException(nameof(shardBytes));
        _scratch = scratch;
        ShardBytes = shardBytes;
        Directory.CreateDirectory(scratch);
    }

    string BodyPath(int shard) => Path.Combine(_scratch, $"shard-{shard + 1:D5}.body");
    string ShardPath(int shard) => Path.Combine(_scratch, $"shard-{shard + 1:D5}.safetensors");

    /// <summary>Continues from a committed state: the open body is cut back to its committed length and
    /// everything written after the commit is removed.</summary>
    public static ShardedSafeTensorsWriter Resume(string scratch, long shardBytes, State state)
    {
        var w = new ShardedSafeTensorsWriter(scratch, shardBytes);
        w._closed.AddRange(state.Closed);
        w._open = [.. state.Open];
        w._openBytes = state.Open.Sum(e => e.Bytes);
        for (int k = 0; k < state.Closed.Count; k++)
            if (!File.Exists(w.ShardPath(k)))
                throw new InvalidDataException($"shard {k + 1} of the checkpoint is missing");
        int open = state.Closed.Count;
        foreach (var f in Directory.EnumerateFiles(scratch, "shard-*"))
        {
            string name = Path.GetFileName(f);
            int k = int.Parse(name[6..11]) - 1;
            bool keep = name.EndsWith(".safetensors", StringComparison.Ordinal) ? k < open
                : name.EndsWith(".body", StringComparison.Ordinal) && k == open;
            if (!keep) File.Delete(f);
        }
        w._bodiesToDelete = open;
        if (w._openBytes > 0)
        {
            var body = new FileInfo(w.BodyPath(open));
            if (!body.Exists || body.Length < w._openBytes)
                throw new InvalidDataException($"shard {open + 1}'s data is shorter than the checkpoint says");
            w._body = new FileStream(body.FullName, FileMode.Open, FileAccess.Write, FileShare.None, 1 << 20);
            w._body.SetLength(w._openBytes);
            w._body.Seek(0, SeekOrigin.End);
        }
        return w;
    }

    /// <summary>Appends a tensor (any dtype; its contiguous bytes).</summary>
    public void Add(string name, Tensor t)
    {
        if (t.device_type != TorchSharp.DeviceType.CPU) throw new ArgumentException($"tensor '{name}' is not on the CPU");
        using var c = t.contiguous();
        Add(name, SafeTensorsDTypes.FromTorch(t.dtype), t.shape, t.NumberOfElements * t.ElementSize, s => SafeTensorsWriter.WriteBytes(s, c));
    }

    /// <summary>Appends a tensor whose bytes <paramref name="write"/> produces (e.g. straight from a mapped checkpoint).</summary>
    public void Add(string name, SafeTensorsDType dtype, long[] shape, long bytes, Action<Stream> write)
    {
        if (_open.Count > 0 && _openBytes + bytes > ShardBytes) CloseOpenShard();
        _body ??= new FileStream(BodyPath(_closed.Count), FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        long before = _body.Position;
        write(_body);
        if (_body.Position - before != bytes)
            throw new InvalidOperationException($"'{name}': {_body.Position - before} bytes written, {bytes} expected");
        _open.Add(new Entry(name, dtype, shape.ToArray(), bytes));
        _openBytes += bytes;
    }

    void CloseOpenShard()
    {
        int k = _closed.Count;
        _body?.Flush(true);
        _body?.Dispose();
        _body = null;
        WriteShard(ShardPath(k), _open, BodyPath(k));
        _closed.Add(_open);
        _open = [];
        _openBytes = 0;
    }

    static void WriteShard(string path, List<Entry> entries, string body)
    {
        var header = SafeTensorsWriter.BuildHeader(entries.Select(e => (e.Name, e.DType, e.Shape, e.Bytes)), Metadata);
        string tmp = path + ".tmp";
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            fs.Write(BitConverter.GetBytes((ulong)header.Length));
            fs.Write(header);
            if (File.Exists(body))
            {
                using var src = new FileStream(body, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
                src.CopyTo(fs, 1 << 20);
            }
            fs.Flush(true);
        }
        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>Makes everything added so far durable and returns the state to resume from. Bodies of
    /// shards closed before the previous commit are no longer needed and are removed.</summary>
    public State Commit()
    {
        _body?.Flush(true);
        for (int k = 0; k < _bodiesToDelete; k++)
            if (File.Exists(BodyPath(k))) File.Delete(BodyPath(k));
        _bodiesToDelete = _closed.Count;
        return new State(_closed.Select(s => s.ToList()).ToList(), _open.ToList());
    }

    /// <summary>Closes the last shard and puts the shards into <paramref name="folder"/> under their
    /// final names (plus the index when there are several). The scratch files stay (the output files
    /// are hard links to them where the file system allows, copies elsewhere), so a run stopped after
    /// this point resumes from its last commit exactly as before. Returns the file names.</summary>
    public IReadOnlyList<string> Finish(string folder)
    {
        if (_open.Count > 0 || _closed.Count == 0) CloseOpenShard();
        int n = _closed.Count;
        var names = new List<string>();
        var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
        for (int k = 0; k < n; k++)
        {
            string name = n == 1 ? "model.safetensors" : $"model-{k + 1:D5}-of-{n:D5}.safetensors";
            FileLinks.LinkOrCopy(ShardPath(k), Path.Combine(folder, name));
            foreach (var e in _closed[k]) weightMap[e.Name] = name;
            names.Add(name);
        }
        if (n > 1)
        {
            var index = new JsonObject
            {
                ["metadata"] = new JsonObject { ["total_size"] = _closed.Sum(s => s.Sum(e => e.Bytes)) },
                ["weight_map"] = new JsonObject(weightMap.Select(kv => KeyValuePair.Create<string, JsonNode?>(kv.Key, kv.Value))),
            };
            File.WriteAllText(Path.Combine(folder, "model.safetensors.index.json"), index.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
            names.Add("model.safetensors.index.json");
        }
        return names;
    }

    public void Dispose()
    {
        _body?.Dispose();
        _body = null;
    }
}
