using DotQuant.Engine.Gguf;
using DotQuant.Engine.Gguf.Blocks;
using DotQuant.Engine.Gguf.Grids;
using DotQuant.Engine.IO;
using DotQuant.Engine.Quantizers;
using DotQuant.Tests;
using static TorchSharp.torch;

namespace DotQuant.Gguf.Tests;

/// <summary>The column solver on GGUF block grids: what it optimizes is what the bytes decode to, and
/// it beats round-to-nearest on the same grid.</summary>
public class GridSolverTests
{
    static string LlamaTiny => Path.Combine(SharedPaths.Root, "models", "llama-tiny");

    /// <summary>A real weight (llama-tiny's layer-2 down_proj, 256 × 768) and a Hessian from correlated
    /// activations with a few dominant channels, as real inputs have.</summary>
    static (Tensor W, Tensor H) Problem()
    {
        using var ckpt = Checkpoint.Open(LlamaTiny);
        var w = ckpt.Load("model.layers.2.mlp.down_proj.weight").to(ScalarType.Float32);
        var g = manual_seed(11);
        long n = w.shape[1];
        var mix = randn([n, n], generator: g).div(Scalars.Of(Math.Sqrt(n))).Plus(eye(n));
        var x = randn([2048, n], generator: g).matmul(mix);
        x.narrow(1, 0, 8).mul_(Scalars.Of(6L));
        var h = x.t().matmul(x).mul_(Scalars.Of(2.0 / 2048));
        return (w, h);
    }

    static double Error(Tensor w, Tensor q, Tensor h)
    {
        using var d = (q - w).to(ScalarType.Float64);
        return (d.matmul(h.to(ScalarType.Float64)) * d).sum().item<double>();
    }

    [Theory]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q4_1)]
    [InlineData(GgmlType.Q5_0)]
    [InlineData(GgmlType.Q5_1)]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.Q2_K)]
    [InlineData(GgmlType.Q3_K)]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.Q5_K)]
    [InlineData(GgmlType.Q6_K)]
    public void GptqOnTheGridBeatsRoundToNearest(GgmlType type)
    {
        var (w, h) = Problem();
        using (w) using (h)
        {
            var o = new SolverOptions { GgufType = type, GroupSize = GgmlTypeInfo.Of(type).BlockSize };
            using var rtn = (GgufRowsLinear)RtnSolver.Solve(w, o with { Kind = SolverKind.Rtn });
            using var gptq = (GgufRowsLinear)ColumnSolver.Solve(w, h, null, o);
            using var qr = rtn.Dequantize();
            using var qg = gptq.Dequantize();
            double er = Error(w, qr, h), eg = Error(w, qg, h);
            Assert.True(eg < 0.8 * er, $"{type}: GPTQ error {eg:G4} vs round-to-nearest {er:G4}");
        }
    }

    /// <summary>What the column loop computes with (the grid's codes and values, a column at a time or a
    /// block at once) is what llama.cpp's quantizer stores and its to_float decodes.</summary>
    [Theory]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q4_1)]
    [InlineData(GgmlType.Q5_1)]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.Q2_K)]
    [InlineData(GgmlType.Q3_K)]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.Q5_K)]
    [InlineData(GgmlType.Q6_K)]
    public void TheSolversGridIsWhatTheBytesDecodeTo(GgmlType type)
    {
        var (w, h) = Problem();
        using (w) using (h)
        {
            var family = new SolverOptions { GgufType = type }.Grid;
            int g = family.BlockSize!.Value;
            using var slice = w.narrow(1, g, g).contiguous();
            using var grid = family.Find(slice);
            using var codes = grid.Codes(slice, 0);
            using var values = grid.Dequantize(codes, 0);
            var codec = BlockCodec.For(type);
            var floats = slice.data<float>().ToArray();
            var decoded = codec.DequantizeRows(codec.QuantizeRows(floats, g), g);
            Assert.Equal(decoded, values.data<float>().ToArray());
            foreach (int c in new[] { 0, 1, 17, g / 2 + 3, g - 1 })
            {
                using var column = grid.Codes(slice.select(1, c), c);
                using var expected = codes.select(1, c);
                Assert.True(column.eq(expected).all().item<bool>(), $"{type}: column {c} coded differently alone");
                using var v = grid.Dequantize(column, c);
                using var ev = values.select(1, c);
                Assert.True(v.eq(ev).all().item<bool>(), $"{type}: column {c} decoded differently alone");
            }
        }
    }

    /// <summary>A solved linear's wire form (how a distributed run moves it between processes) rebuilds the
    /// same weight and the same file bytes, whatever the kind: integer grids with act order, GGUF legacy and
    /// k-quant rows.</summary>
    [Theory]
    [InlineData(null)]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.Q6_K)]
    public void A_solved_linear_crosses_the_wire_bit_for_bit(GgmlType? type)
    {
        var (w, h) = Problem();
        using (w) using (h)
        {
            var o = type is { } t ? new SolverOptions { GgufType = t, GroupSize = GgmlTypeInfo.Of(t).BlockSize }
                                  : new SolverOptions { Bits = 3, GroupSize = 32, ActOrder = true };
            using var solved = ColumnSolver.Solve(w, h, null, o);
            using var wire = SolvedLinearWire.Encode(solved);
            using var back = SolvedLinearWire.Decode(wire);
            Assert.Equal(solved.GetType() == typeof(QuantizedLinear) ? typeof(QuantizedLinear) : typeof(EncodedRowsLinear), back.GetType());
            using var a = solved.Dequantize();
            using var b = back.Dequantize();
            Assert.Equal(a.data<float>().ToArray(), b.data<float>().ToArray());
            Assert.Equal(BitConverter.DoubleToInt64Bits(solved.Loss), BitConverter.DoubleToInt64Bits(back.Loss));
            Assert.Equal(solved.DampUsed, back.DampUsed);
            var pa = new Dictionary<string, Tensor>();
            var pb = new Dictionary<string, Tensor>();
            solved.Pack(pa, "x");
            back.Pack(pb, "x");
            Assert.Equal(pa.Keys.Order(), pb.Keys.Order());
            foreach (var k in pa.Keys) Assert.True(pa[k].bytes.SequenceEqual(pb[k].bytes), k);
            foreach (var x in pa.Values.Concat(pb.Values)) x.Dispose();
            // About a byte per weight (a byte per code; at group size 32 an fp32 scale and an int32 zero add a quarter), not fp32's four.
            long bytes = wire.Tensors.Sum(x => x.Tensor.NumberOfElements * x.Tensor.ElementSize);
            Assert.True(bytes <= 1.3 * a.NumberOfElements, $"{bytes} bytes on the wire for {a.NumberOfElements} weights");
        }
    }
}
