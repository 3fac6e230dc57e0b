using DotQuant.Engine.Quantizers;
using Xunit;
using static TorchSharp.torch;

namespace DotQuant.Engine.Tests;

/// <summary>The broadcast dequantization of consecutive groups gives the gathered per-column formula's
/// bits exactly; act-order g_idx and partial groups keep the gather.</summary>
public class DequantizeTests
{
    static QuantizedLinear Make(long m, long n, int group, Tensor gIdx, Generator gen)
    {
        long groups = gIdx.max().item<int>() + 1;
        return new QuantizedLinear
        {
            Codes = randint(0, 16, [m, n], dtype: ScalarType.Byte, generator: gen),
            Scales = rand([groups, m], generator: gen).mul_(Scalars.Of(0.1)),
            Zeros = randint(0, 16, [groups, m], dtype: ScalarType.Int32, generator: gen),
            GIdx = gIdx, Bits = 4, GroupSize = group,
        };
    }

    static Tensor Gathered(QuantizedLinear q)
    {
        var g = q.GIdx.to(ScalarType.Int64);
        return (q.Codes.to(q.Scales.dtype) - q.Zeros.to(q.Scales.dtype).index_select(0, g).t()).mul_(q.Scales.index_select(0, g).t());
    }

    [Theory]
    [InlineData(96, 256, 32, false)]     // consecutive groups: broadcast path
    [InlineData(96, 256, 32, true)]      // act-order g_idx: gather path
    [InlineData(40, 100, 32, false)]     // last group partial: gather path
    public void Every_path_equals_the_gathered_formula_bit_for_bit(long m, long n, int group, bool permuted)
    {
        var gen = new Generator(7);
        var gIdx = Scalars.Range(n, ScalarType.Int64).div(Scalars.Of(group), rounding_mode: RoundingMode.floor);
        if (permuted) gIdx = gIdx.index_select(0, randperm(n, generator: gen));
        using var q = Make(m, n, group, gIdx.to(ScalarType.Int32), gen);
        using var fast = q.Dequantize();
        using var reference = Gathered(q);
        Assert.True(fast.eq(reference).all().item<bool>(), "dequantized weights differ from the gathered formula");
        using var twice = q.Dequantize();
        Assert.True(twice.eq(fast).all().item<bool>());
    }
}
