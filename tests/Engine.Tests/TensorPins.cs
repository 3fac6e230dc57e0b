using System.Security.Cryptography;
using DotQuant.Engine.IO;
using static TorchSharp.torch;

namespace DotQuant.Tests;

/// <summary>What Golden/pipeline-pins.json records of a package: a hash per tensor, and the numerics key
/// it was recorded with. Shared by the recorder (`dotquant-bench pins`, which links this file)
/// and the test that compares against the recording.</summary>
public static class TensorPins
{
    /// <summary>The numerics this process computes with (kernels and threads, Torch/Numerics): bytes are
    /// promised equal between runs with the same key.</summary>
    public static string Numerics() => DotQuant.Engine.Torch.Numerics.Key(get_num_threads());

    /// <summary>name → "DTYPE[shape]:sha256" of every tensor of a model folder (single file or shards).</summary>
    public static SortedDictionary<string, string> Of(string folder)
    {
        using var ckpt = Checkpoint.Open(folder);
        var result = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var info in ckpt.Tensors)
        {
            using var t = ckpt.Load(info.Name);
            using var c = t.contiguous();
            string hash = info.Length == 0 ? "empty" : Convert.ToHexStringLower(SHA256.HashData(c.bytes))[..24];
            result[info.Name] = $"{info.DType}[{string.Join(",", info.Shape)}]:{hash}";
        }
        return result;
    }
}
