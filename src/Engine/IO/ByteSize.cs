using System.Globalization;
using DotQuant.Runtime;

namespace DotQuant.Engine.IO;

/// <summary>Sizes as people write them: a byte count, or a number with a unit. KB/MB/GB/TB are
/// decimal (transformers' "5GB" shard size is 5·10⁹ bytes); K/M/G/T and KiB/MiB/GiB/TiB are binary
/// (a 6G memory limit is 6 GiB, as in cgroups and systemd).</summary>
public static class ByteSize
{
    static readonly (string Suffix, double Factor)[] Units =
    [
        ("KiB", 1L << 10), ("MiB", 1L << 20), ("GiB", 1L << 30), ("TiB", 1L << 40),
        ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12),
        ("K", 1L << 10), ("M", 1L << 20), ("G", 1L << 30), ("T", 1L << 40),
        ("B", 1),
    ];

    public static bool TryParse(string text, out long bytes)
    {
        string t = text.Trim();
        double factor = 1;
        foreach (var (suffix, f) in Units)
            if (t.EndsWith(suffix, StringComparison.OrdinalIgnoreCase))
            {
                factor = f;
                t = t[..^suffix.Length].Trim();
                break;
            }
        bytes = 0;
        if (!double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || !(v > 0) || double.IsInfinity(v * factor) || v * factor > long.MaxValue)
            return false;
        bytes = (long)Math.Round(v * factor);
        return bytes > 0;
    }

    public static long Parse(string text, string what) =>
        TryParse(text, out long b) ? b : throw new DotQuantException(ErrorCodes.Usage, $"{what} '{text}' is not a size (e.g. 6G, 24GiB, 5GB, 4000000000)");

    public static string Format(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):F2} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):F0} MiB",
        _ => $"{bytes / 1024.0:F0} KiB",
    };
}
