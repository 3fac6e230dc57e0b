using DotQuant.Cluster;
using DotQuant.Engine.Torch;
using Xunit;
using static TorchSharp.torch;

namespace DotQuant.Tool.Tests.Cluster;

/// <summary>A shard's symmetric sums travel as their upper triangle and come back bit for bit; a sum that
/// is not exactly symmetric (GPTAQ's D, or an H off by one rounding) travels whole.</summary>
public class SymmetricPackingTests
{
    [Theory]
    [InlineData(37)]
    [InlineData(600)]       // past the 256-column bands the lower triangle is mirrored in
    public void The_upper_triangle_rebuilds_the_matrix_bit_for_bit(int n)
    {
        var g = manual_seed(3);
        using var x = randn([64, n], dtype: ScalarType.Float64, generator: g);
        using var h = x.t().matmul(x);
        using var sym = h.triu().Plus(h.triu(1).t());     // exactly symmetric, whatever the GEMM did
        sym[5, 5] = tensor(-0.0);
        sym[n - 1, 2] = tensor(-0.0);                      // and its mirror stays +0.0: not symmetric bit for bit
        Assert.False(SymmetricPacking.Applies(sym));
        sym[n - 1, 2] = sym[2, n - 1].clone();
        Assert.True(SymmetricPacking.Applies(sym));
        using var packed = SymmetricPacking.Pack(sym);
        Assert.Equal((long)n * (n + 1) / 2, packed.shape[0]);
        using var back = SymmetricPacking.Unpack(packed, n);
        Assert.Equal(sym.data<double>().ToArray().Select(BitConverter.DoubleToInt64Bits), back.data<double>().ToArray().Select(BitConverter.DoubleToInt64Bits));

        using var d = sym.clone();
        d[3, 4] = tensor(d[3, 4].item<double>() + 1e-9);
        Assert.False(SymmetricPacking.Applies(d));
        using var rect = randn([4, 5], generator: g);
        Assert.False(SymmetricPacking.Applies(rect));
        Assert.Throws<InvalidDataException>(() => SymmetricPacking.Unpack(packed, n - 1));
    }
}
