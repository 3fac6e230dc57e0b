using System.Security.Cryptography;
using DotQuant.Engine.IO;
using static TorchSharp.torch;

namespace DotQuant.Tests;

/// <summary>What Golden/pipeline-pins.json records of a package: a hash per tensor, and a probe of the
/// machine's libtorch numerics. Shared by the recorder (`dotquant-bench pins`, which links this file)
/// and the test that compares against the recording.</summary>
public static class TensorPins
{
    /// <summary>Hashes of a fixed libtorch computation (matmul, Cholesky, bf16 rounding, SiLU): tensors
    /// are only comparable bit for bit between machines whose probes agree.</summary>
    public static string NumericsProbe()
    {
        using var scope = NewDisposeScope();
        var g = new Generator(1234);
        var a = randn(257, 131, generator: g);
        var h = a.t().matmul(a).Plus(eye(131));
        var l = linalg.cholesky(h);
        var mix = cat([l.reshape(-1), h.to(ScalarType.BFloat16).to(ScalarType.Float32).reshape(-1), nn.functional.silu(a).reshape(-1)]);
        return Convert.ToHexStringLower(SHA256.HashData(mix.contiguous().bytes))[..16];
    }

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
