using DotQuant.Runtime;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Engine.Rotation;

/// <summary>A rotated Llama-family model as a weight source: the rotated tensors come from the files
/// <see cref="QuaRot.Apply"/> wrote (memory-mapped, one block at a time like any checkpoint), anything
/// the rotation does not touch from the source checkpoint. Its config is the one the rotated model must
/// run with: untied head and, with R4, the online Hadamard before down_proj.</summary>
public sealed class QuaRotSource : IWeightSource, IDisposable
{
    readonly Checkpoint _source;
    readonly List<SafeTensorsFile> _files = [];
    readonly Dictionary<string, (SafeTensorsFile File, SafeTensorInfo Info)> _rotated = new(StringComparer.Ordinal);
    readonly List<string> _names;

    readonly RotationOptions _options;

    internal QuaRotSource(Checkpoint source, ModelConfig config, RotationOptions options, IEnumerable<string> files, HadamardPlan residual, HadamardPlan? down)
    {
        _source = source;
        _options = options;
        Config = config;
        Residual = residual;
        DownProj = down;
        try
        {
            foreach (var path in files)
            {
                var f = SafeTensorsFile.Open(path);
                _files.Add(f);
                foreach (var t in f.Tensors.Values) _rotated[t.Name] = (f, t);
            }
        }
        catch
        {
            foreach (var f in _files) f.Dispose();
            throw;
        }
        _names = source.Names.Union(_rotated.Keys).Order(StringComparer.Ordinal).ToList();
    }

    public string Directory => _source.Directory;
    public ModelConfig Config { get; }
    public HadamardPlan Residual { get; }
    public HadamardPlan? DownProj { get; }
    /// <summary>Every tensor of the rotated model (+ lm_head when it was tied).</summary>
    public IReadOnlyList<string> Names => _names;

    /// <summary>What a package of the rotated model says in its config.json: untied head, and the
    /// online Hadamard the runtime applies before down_proj.</summary>
    public void PatchConfig(System.Text.Json.Nodes.JsonObject config)
    {
        config["tie_word_embeddings"] = false;
        config["dotquant_rotation"] = new System.Text.Json.Nodes.JsonObject
        {
            ["down_proj_input"] = DownProj is null ? "none" : "hadamard",
            ["residual"] = Residual.ToString(),
            ["seed"] = _options.Seed,
        };
    }

    public bool Contains(string name) => _rotated.ContainsKey(name) || _source.Contains(name);

    public TensorShape? Describe(string name) =>
        _rotated.TryGetValue(name, out var e) ? new TensorShape(e.Info.DType.ToTorch(), e.Info.Shape) : _source.Describe(name);

    public Tensor LoadStored(string name) => _rotated.TryGetValue(name, out var e) ? e.File.Load(name) : _source.LoadStored(name);

    public Tensor Load(string name, params long[] expectedShape)
    {
        if (!_rotated.TryGetValue(name, out var e)) return _source.Load(name, expectedShape);
        if (expectedShape.Length > 0 && !e.Info.Shape.SequenceEqual(expectedShape))
            throw new DotQuantException(ErrorCodes.WeightShape, $"'{name}' is [{string.Join(", ", e.Info.Shape)}], expected [{string.Join(", ", expectedShape)}]", Directory);
        return e.File.Load(name);
    }

    public Tensor LoadRows(string name, Tensor rows)
    {
        if (!_rotated.TryGetValue(name, out var e)) return _source.LoadRows(name, rows);
        using var r = rows.to(ScalarType.Int64).contiguous();
        var ids = r.data<long>().ToArray();
        var result = empty([ids.Length, e.Info.Shape[1]], e.Info.DType.ToTorch());
        e.File.CopyRows(e.Info, ids, result);
        return result;
    }

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
    }
}
