namespace DotQuant.Engine.Calibration;

/// <summary>A tiny seeded generator with a fixed algorithm (SplitMix64), so calibration samples are
/// the same on every machine and runtime version — System.Random makes no such promise.</summary>
public sealed class SplitMix64(long seed)
{
    ulong _state = unchecked((ulong)seed);

    public ulong Next()
    {
        ulong z = unchecked(_state += 0x9E3779B97F4A7C15UL);
        z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL);
        z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBUL);
        return z ^ (z >> 31);
    }

    /// <summary>Uniform integer in [0, bound) without modulo bias (rejection sampling).</summary>
    public long NextBelow(long bound)
    {
        if (bound <= 0) throw new ArgumentOutOfRangeException(nameof(bound));
        ulong b = (ulong)bound;
        ulong limit = ulong.MaxValue - ulong.MaxValue % b;
        ulong r;
        do r = Next(); while (r >= limit);
        return (long)(r % b);
    }
}
