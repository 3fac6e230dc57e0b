using static TorchSharp.torch;

namespace DotQuant.Cluster;

/// <summary>A shard's H sums (XᵀX, H̄) are symmetric: only the upper triangle travels, row by row, which
/// halves the statistics' bytes. Exact: a sum is packed only when it equals its transpose bit for bit, and
/// the receiver copies each value into both of its places (no arithmetic), so the coordinator adds the
/// sums it would have received whole. D (GPTAQ's cross term) is not symmetric and travels whole.</summary>
public static class SymmetricPacking
{
    public static bool Applies(Tensor t)
    {
        if (t.dim() != 2 || t.shape[0] != t.shape[1] || t.shape[0] < 2 || !t.is_contiguous()) return false;
        // Bit for bit (−0.0 is not 0.0, a NaN is itself), a band of rows at a time against the same columns.
        long n = t.shape[0], band = Math.Max(1, (8L << 20) / (n * t.ElementSize));
        for (long i = 0; i < n; i += band)
        {
            long rows = Math.Min(band, n - i);
            using var upper = t.narrow(0, i, rows);
            using var columns = t.narrow(1, i, rows);
            using var lower = columns.t().contiguous();
            if (!upper.bytes.SequenceEqual(lower.bytes)) return false;
        }
        return true;
    }

    /// <summary>Rows i of the upper triangle, H[i, i…n), one after another.</summary>
    public static Tensor Pack(Tensor t)
    {
        long n = t.shape[0], offset = 0;
        var packed = empty([n * (n + 1) / 2], t.dtype);
        for (long i = 0; i < n; i++)
        {
            using var row = t[i].narrow(0, i, n - i);
            using var target = packed.narrow(0, offset, n - i);
            target.copy_(row);
            offset += n - i;
        }
        return packed;
    }

    public static Tensor Unpack(Tensor packed, long n)
    {
        if (packed.dim() != 1 || packed.shape[0] != n * (n + 1) / 2)
            throw new InvalidDataException($"a packed symmetric {n}×{n} tensor has {n * (n + 1) / 2} values, not {packed.shape[0]}");
        var t = empty([n, n], packed.dtype);
        long offset = 0;
        for (long i = 0; i < n; i++)
        {
            using var values = packed.narrow(0, offset, n - i);
            using var row = t[i].narrow(0, i, n - i);
            row.copy_(values);
            offset += n - i;
        }
        // The lower triangle, a band of columns at a time: copies of the upper one (no arithmetic, so
        // −0.0 and NaN survive), the band's diagonal block chosen element by element.
        const long band = 256;
        for (long i = 0; i < n; i += band)
        {
            using var scope = NewDisposeScope();
            long r = Math.Min(band, n - i), below = n - i - r;
            if (below > 0) t.narrow(0, i + r, below).narrow(1, i, r).copy_(t.narrow(0, i, r).narrow(1, i + r, below).t());
            var diagonal = t.narrow(0, i, r).narrow(1, i, r);
            var upper = ones([r, r], ScalarType.Bool).triu();
            diagonal.copy_(where(upper, diagonal, diagonal.t()));
        }
        return t;
    }
}
