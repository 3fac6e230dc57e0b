using DotQuant.Engine.Quantizers;
using Xunit;
using static TorchSharp.torch;

namespace DotQuant.Engine.Tests;

/// <summary>Linears sharing an H share its factorization: one factorization for the group, and each
/// linear's result identical, bit for bit, to solving it alone.</summary>
public class FactorCacheTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Linears_sharing_H_factorize_once_and_solve_exactly_as_alone(bool actOrder)
    {
        var g = new Generator(5);
        int n = 96;
        var x = randn(400, n, generator: g);
        var h = x.t().matmul(x).mul_(Scalars.Of(2.0 / 400));
        h.select(0, 7).zero_(); h.select(1, 7).zero_();                    // a dead input too
        var weights = Enumerable.Range(0, 3).Select(i => randn(16 + 8 * i, n, generator: g)).ToList();
        var o = new SolverOptions { Bits = 3, GroupSize = 32, ActOrder = actOrder };

        var alone = weights.Select(w => (QuantizedLinear)ColumnSolver.Solve(w, h, null, o)).ToList();
        using var factors = new FactorCache();
        int factorizations = 0;
        // As the pipeline does: the group's last linear consumes H (works on it in place).
        var groupH = h.clone();
        var shared = weights.Select((w, i) => (QuantizedLinear)ColumnSolver.Solve(w, groupH, null, o, consumeH: i == 2, factors: factors)).ToList();
        using (var probe = new FactorCache())
        {
            for (int i = 0; i < 3; i++)
                probe.GetOrAdd(FactorCache.KeyOf(h, o.Damp, o.ActOrder, o.DType), () => { factorizations++; return InverseCholesky.Factor(h.clone(), o.Damp, "probe"); }).U.Dispose();
        }
        Assert.Equal(1, factorizations);
        for (int i = 0; i < 3; i++)
        {
            Assert.True(alone[i].Codes.eq(shared[i].Codes).all().item<bool>(), $"linear {i}: codes differ");
            Assert.True(alone[i].Scales.eq(shared[i].Scales).all().item<bool>(), $"linear {i}: scales differ");
            Assert.Equal(alone[i].Loss, shared[i].Loss);
        }
        foreach (var q in alone.Concat(shared)) q.Dispose();
    }
}
