using System.Collections.Concurrent;
using TorchSharp;
using static TorchSharp.torch;

namespace DotQuant.Engine.Torch;

/// <summary>The only way src/ hands libtorch a number. TorchSharp's implicit conversions (`t * 0.5`,
/// `t.clamp_min(1e-9)`) and some of its own overloads (`a + b` allocates an alpha of 1, `square()` an
/// exponent) create a Scalar that nothing references once its handle is passed to native code; the GC
/// may finalize (free) it while libtorch still reads it ("INTERNAL ASSERT FAILED at Scalar.h"). Those
/// APIs are banned in src/ (BannedSymbols.txt, generated from TorchSharp's IL); what remains is this:
/// <list type="bullet">
/// <item><see cref="Of(double)"/>: a Scalar rooted for the process, cached by value — for constants and
/// values from the manifest or the config (a bounded set).</item>
/// <item><see cref="Use{T}(double, Func{Scalar, T})"/>: a Scalar disposed after the call that reads it —
/// for values computed during the run (a damping, a column's scale), which would grow the cache.</item>
/// </list>
/// c10::Scalar stores every floating value as a double and every integer as an int64, so Of(0.5f) and
/// Of(0.5) are the same Scalar; integers stay integers (integer tensors keep their dtype).</summary>
public static class Scalars
{
#pragma warning disable RS0030 // this class is where the banned factories are used, and rooted or disposed
    static readonly ConcurrentDictionary<long, Scalar> Doubles = new();
    static readonly ConcurrentDictionary<long, Scalar> Longs = new();
    static readonly Scalar True = true.ToScalar(), False = false.ToScalar();

    /// <summary>The alpha of a plain sum: TorchSharp's `a + b` converts a fresh 1 for it on every call.</summary>
    public static Scalar One { get; } = 1.0.ToScalar();

    /// <summary>A rooted Scalar holding <paramref name="value"/> (keyed by its bits: -0.0 and NaNs are kept apart).</summary>
    public static Scalar Of(double value) => Doubles.GetOrAdd(BitConverter.DoubleToInt64Bits(value), bits => BitConverter.Int64BitsToDouble(bits).ToScalar());

    /// <summary>A rooted integer Scalar.</summary>
    public static Scalar Of(long value) => Longs.GetOrAdd(value, v => v.ToScalar());

    public static Scalar Of(bool value) => value ? True : False;

    /// <summary>How many rooted Scalars exist (the GC-stress test checks that the cache stays small).</summary>
    public static int Cached => Doubles.Count + Longs.Count;

    /// <summary>Calls <paramref name="call"/> with a Scalar of a computed value, disposed when it returns
    /// (the using keeps it reachable for the whole native call).</summary>
    public static T Use<T>(double value, Func<Scalar, T> call)
    {
        using var s = value.ToScalar();
        return call(s);
    }

    public static T Use<T>(long value, Func<Scalar, T> call)
    {
        using var s = value.ToScalar();
        return call(s);
    }

    /// <summary>A one-element tensor's value as a double (TorchSharp's ToDouble goes through a temporary Scalar).</summary>
    public static double ToDouble(Tensor t)
    {
        using var s = t.ToScalar();
        return s.ToDouble();
    }
#pragma warning restore RS0030

    /// <summary>a + b without a temporary Scalar: TorchSharp's own sum with its integer alpha of 1, rooted
    /// (an integer alpha also suits integer tensors, which refuse a floating one).</summary>
    public static Tensor Plus(this Tensor a, Tensor b) => a.add(b, Of(1L));

    /// <summary>x² (TorchSharp's square() converts its exponent on every call).</summary>
    public static Tensor Squared(this Tensor x) => x.pow(Of(2L));

    /// <summary>0, 1, …, stop − 1 (TorchSharp's one-argument arange converts its start and step on every call).</summary>
    public static Tensor Range(long stop, ScalarType dtype) => Use(stop, s => arange(Of(0L), s, Of(1L), dtype: dtype));

    /// <summary>start, start + 1, …, stop − 1.</summary>
    public static Tensor Range(long start, long stop, ScalarType dtype) =>
        Use(start, a => Use(stop, b => arange(a, b, Of(1L), dtype: dtype)));
}
