using System.Collections.Concurrent;
using TorchSharp;

namespace DotQuant.Engine.Models;

/// <summary>Long-lived TorchSharp Scalars for the constants of hot paths. `tensor + 1e-6` converts the
/// number to a Scalar that nothing references once its handle is passed to libtorch: the GC may finalize
/// (free) it while libtorch still reads it ("INTERNAL ASSERT FAILED at Scalar.h", seen in generation
/// loops that allocate a lot). A Scalar held here is rooted for the process's lifetime.</summary>
public static class Scalars
{
    static readonly ConcurrentDictionary<double, Scalar> Doubles = new();
    static readonly ConcurrentDictionary<long, Scalar> Longs = new();

    /// <summary>The alpha of a plain sum: TorchSharp's `a + b` converts a fresh 1 for it on every call.</summary>
    public static Scalar One { get; } = 1.0.ToScalar();

    /// <summary>a + b without a temporary Scalar.</summary>
    public static torch.Tensor Plus(this torch.Tensor a, torch.Tensor b) => a.add(b, One);

    public static Scalar Of(double value) => Doubles.GetOrAdd(value, v => v.ToScalar());
    public static Scalar Of(long value) => Longs.GetOrAdd(value, v => v.ToScalar());
}
