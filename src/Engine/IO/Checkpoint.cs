using System.Text.Json;
using DotQuant.Runtime;
using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Engine.IO;

/// <summary>The weights of a Hugging Face model folder: one <c>model.safetensors</c> or shards named
/// by <c>model.safetensors.index.json</c>. Pickle checkpoints are refused, never unpickled.</summary>
public sealed class Checkpoint : IWeightSource, IDisposable
{
    readonly List<SafeTensorsFile> _files;
    readonly Dictionary<string, (SafeTensorsFile File, SafeTensorInfo Info)> _index;
    readonly List<string> _names;

    public string Directory { get; }
    public IReadOnlyList<SafeTensorsFile> Files => _files;
    public IEnumerable<SafeTensorInfo> Tensors => _index.Values.Select(v => v.Info);

    Checkpoint(string dir, List<SafeTensorsFile> files, Dictionary<string, (SafeTensorsFile, SafeTensorInfo)> index)
    {
        Directory = dir; _files = files; _index = index;
        _names = index.Keys.Order(StringComparer.Ordinal).ToList();
    }

    /// <summary>Tensor names in ordinal order.</summary>
    public IReadOnlyList<string> Names => _names;

    static readonly string[] PickleNames = ["pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "consolidated.00.pth"];

    /// <summary>Opens a model folder or a single .safetensors file.</summary>
    public static Checkpoint Open(string path)
    {
        if (File.Exists(path))
        {
            RefuseIfPickle(path);
            var single = SafeTensorsFile.Open(path);
            return FromFiles(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!, [single], null);
        }
        if (!System.IO.Directory.Exists(path))
            throw new DotQuantException(ErrorCodes.FileNotFound, $"model path not found: {path}", path);

        string indexPath = System.IO.Path.Combine(path, "model.safetensors.index.json");
        string singlePath = System.IO.Path.Combine(path, "model.safetensors");
        if (File.Exists(indexPath)) return OpenSharded(path, indexPath);
        if (File.Exists(singlePath)) return FromFiles(path, [SafeTensorsFile.Open(singlePath)], null);

        foreach (var name in PickleNames)
            RefuseIfPickle(System.IO.Path.Combine(path, name));
        var stray = System.IO.Directory.EnumerateFiles(path, "*.safetensors").Order(StringComparer.Ordinal).ToList();
        if (stray.Count == 1) return FromFiles(path, [SafeTensorsFile.Open(stray[0])], null);
        throw new DotQuantException(ErrorCodes.NoCheckpoint,
            stray.Count == 0
                ? $"no model.safetensors or model.safetensors.index.json in {path}"
                : $"{stray.Count} .safetensors files in {path} but no model.safetensors.index.json to say how they combine", path);
    }

    static void RefuseIfPickle(string file)
    {
        string name = System.IO.Path.GetFileName(file);
        bool pickle = name.EndsWith(".bin", StringComparison.OrdinalIgnoreCase) || name.EndsWith(".pt", StringComparison.OrdinalIgnoreCase)
                      || name.EndsWith(".pth", StringComparison.OrdinalIgnoreCase) || name == "pytorch_model.bin.index.json";
        if (pickle && File.Exists(file))
            throw new DotQuantException(ErrorCodes.PickleCheckpoint,
                $"'{name}' is a PyTorch pickle checkpoint; DotQuant never unpickles (it can run arbitrary code). " +
                "Convert it to safetensors first, e.g. `model.save_pretrained(dir, safe_serialization=True)` in transformers, " +
                "or the `convert` Space / `safetensors.torch.save_file`.", file);
    }

    static Checkpoint OpenSharded(string dir, string indexPath)
    {
        Dictionary<string, string> map;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(indexPath));
            if (!doc.RootElement.TryGetProperty("weight_map", out var wm) || wm.ValueKind != JsonValueKind.Object)
                throw new DotQuantException(ErrorCodes.ShardIndex, "index has no 'weight_map' object", indexPath);
            map = new(StringComparer.Ordinal);
            foreach (var p in wm.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                    throw new DotQuantException(ErrorCodes.ShardIndex, $"weight_map entry '{p.Name}' is not a file name", indexPath);
                map[p.Name] = p.Value.GetString()!;
            }
        }
        catch (JsonException e)
        {
            throw new DotQuantException(ErrorCodes.ShardIndex, $"index is not well-formed JSON: {e.Message}", indexPath);
        }

        var files = new List<SafeTensorsFile>();
        try
        {
            var byName = new Dictionary<string, SafeTensorsFile>(StringComparer.Ordinal);
            foreach (var shard in map.Values.Distinct().Order(StringComparer.Ordinal))
            {
                // A hostile index must not make us read outside the model folder.
                if (shard.Contains('/') || shard.Contains('\\') || shard is "." or ".." || !shard.EndsWith(".safetensors", StringComparison.Ordinal))
                    throw new DotQuantException(ErrorCodes.ShardIndex, $"shard name '{shard}' is not a .safetensors file name in the model folder", indexPath);
                var f = SafeTensorsFile.Open(System.IO.Path.Combine(dir, shard));
                files.Add(f);
                byName[shard] = f;
            }
            return FromFiles(dir, files, map.ToDictionary(kv => kv.Key, kv => byName[kv.Value], StringComparer.Ordinal));
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
    }

    static Checkpoint FromFiles(string dir, List<SafeTensorsFile> files, Dictionary<string, SafeTensorsFile>? map)
    {
        var index = new Dictionary<string, (SafeTensorsFile, SafeTensorInfo)>(StringComparer.Ordinal);
        if (map is null)
        {
            foreach (var f in files)
                foreach (var t in f.Tensors.Values)
                    index[t.Name] = (f, t);
        }
        else
        {
            foreach (var (name, f) in map)
            {
                if (!f.Tensors.TryGetValue(name, out var info))
                    throw new DotQuantException(ErrorCodes.ShardIndex, $"the index puts '{name}' in {System.IO.Path.GetFileName(f.Path)}, which does not contain it", f.Path);
                index[name] = (f, info);
            }
        }
        return new Checkpoint(dir, files, index);
    }

    public bool Contains(string name) => _index.ContainsKey(name);

    public TensorShape? Describe(string name) =>
        _index.TryGetValue(name, out var e) ? new TensorShape(e.Info.DType.ToTorch(), e.Info.Shape) : null;

    public SafeTensorInfo Info(string name) =>
        _index.TryGetValue(name, out var e)
            ? e.Info
            : throw new DotQuantException(ErrorCodes.WeightMissing, $"weight '{name}' is missing from the checkpoint in {Directory}", Directory);

    public Tensor LoadStored(string name) => Load(name);

    /// <summary>The file holding a tensor and its header entry (to copy its bytes without a tensor).</summary>
    public (SafeTensorsFile File, SafeTensorInfo Info) Locate(string name) =>
        _index.TryGetValue(name, out var e)
            ? e
            : throw new DotQuantException(ErrorCodes.WeightMissing, $"weight '{name}' is missing from the checkpoint in {Directory}", Directory);

    /// <summary>Loads a tensor in its stored dtype.</summary>
    public Tensor Load(string name)
    {
        var info = Info(name);
        return _index[name].File.Load(info.Name);
    }

    /// <summary>Loads a floating-point weight and checks its shape.</summary>
    public Tensor Load(string name, params long[] expectedShape)
    {
        var info = Info(name);
        if (info.DType is not (SafeTensorsDType.F32 or SafeTensorsDType.BF16 or SafeTensorsDType.F16 or SafeTensorsDType.F64))
            throw new DotQuantException(ErrorCodes.WeightShape,
                $"weight '{name}' is {info.DType}; a floating-point tensor (F32, BF16, F16) is expected", _index[name].File.Path);
        if (!info.Shape.SequenceEqual(expectedShape))
            throw new DotQuantException(ErrorCodes.WeightShape,
                $"weight '{name}' has shape [{string.Join(", ", info.Shape)}], config.json implies [{string.Join(", ", expectedShape)}]", _index[name].File.Path);
        return Load(name);
    }

    /// <summary>Rows of a 2-D tensor, read from the mapped file one row at a time.</summary>
    public Tensor LoadRows(string name, Tensor rows)
    {
        var info = Info(name);
        if (info.Shape.Length != 2)
            throw new DotQuantException(ErrorCodes.WeightShape, $"'{name}' is not a matrix", _index[name].File.Path);
        using var r = rows.to(ScalarType.Int64).contiguous();
        var ids = r.data<long>().ToArray();
        var result = empty([ids.Length, info.Shape[1]], info.DType.ToTorch());
        _index[name].File.CopyRows(info, ids, result);
        return result;
    }

    public long TotalBytes => _index.Values.Sum(v => v.Info.Length);

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
    }
}
