using DotQuant.Runtime;
using DotQuant.Engine.Onnx;
using DotQuant.Engine.Quantizers;
using DotQuant.Tests;
using Microsoft.ML.OnnxRuntime;
using static TorchSharp.torch;

namespace DotQuant.Onnx.Tests;

/// <summary>The MatMulNBits layout of a grid: what it decodes to is our dequantized weight bit for bit, and
/// ONNX Runtime's MatMulNBits, run on it alone, computes x·Wᵀ with that weight.</summary>
public class NBitsWeightTests
{
    static QuantizedLinear Grid(long m, long n, int bits, int group, Generator gen, Tensor? gIdx = null)
    {
        int g = group <= 0 ? (int)n : group;
        gIdx ??= Scalars.Range(n, ScalarType.Int64).div(Scalars.Of(g), rounding_mode: RoundingMode.floor).to(ScalarType.Int32);
        long groups = gIdx.max().item<int>() + 1;
        return new QuantizedLinear
        {
            Codes = randint(0, 1 << bits, [m, n], dtype: ScalarType.Byte, generator: gen),
            Scales = rand([groups, m], generator: gen).mul_(Scalars.Of(0.1)),
            Zeros = randint(0, 1 << bits, [groups, m], dtype: ScalarType.Int32, generator: gen),
            GIdx = gIdx, Bits = bits, GroupSize = group,
        };
    }

    [Theory]
    [InlineData(24, 256, 4, 32)]
    [InlineData(24, 256, 4, 128)]
    [InlineData(24, 200, 4, 32)]      // K not a multiple of the block: the last block is padded
    [InlineData(24, 96, 4, 48)]       // groups of 48 = three blocks of 16
    [InlineData(24, 200, 4, -1)]      // per-channel: blocks of 128 with the row's one scale
    [InlineData(24, 64, 4, 128)]      // a group wider than the row: one block of 64, no padding
    [InlineData(17, 256, 8, 64)]
    [InlineData(17, 77, 8, 16)]
    public void DecodesToOurWeightAndOnnxRuntimeMultipliesWithIt(long m, long n, int bits, int group)
    {
        var gen = new Generator(11);
        using var q = Grid(m, n, bits, group, gen);
        var w = NBitsWeight.From(q);
        using var ours = q.Dequantize();
        using var decoded = w.Dequantize();
        Assert.True(ours.eq(decoded).all().item<bool>(), "decoded weight differs from QuantizedLinear.Dequantize");

        // ORT's kernel on the same bytes: y = x·Wᵀ for a few rows x.
        using var x = randn([3, n], generator: gen);
        using var expected = x.matmul(ours.t());
        var y = OneNode(w, x.data<float>().ToArray());
        var e = expected.data<float>().ToArray();
        double scale = e.Max(Math.Abs);
        for (int i = 0; i < e.Length; i++)
            Assert.True(Math.Abs(y[i] - e[i]) <= 1e-5 * scale, $"element {i}: ORT {y[i]} vs {e[i]}");
    }

    [Theory]
    [InlineData(32, 4096, 32)]
    [InlineData(128, 4096, 128)]
    [InlineData(256, 4096, 128)]     // two blocks of 128 per group
    [InlineData(48, 4096, 16)]
    [InlineData(-1, 4096, 128)]
    [InlineData(-1, 64, 64)]
    [InlineData(128, 64, 64)]        // one group per row: the row's own power of two
    [InlineData(-1, 8, 16)]
    public void BlockSizes(int group, long k, int block) => Assert.Equal(block, NBitsWeight.BlockFor(group, k));

    [Fact]
    public void RefusesGroupsThatAreNotConsecutiveAndZerosOutsideTheBits()
    {
        var gen = new Generator(3);
        using var permuted = Grid(8, 64, 4, 32, gen, Scalars.Range(64, ScalarType.Int64).div(Scalars.Of(32L), rounding_mode: RoundingMode.floor).flip(0).to(ScalarType.Int32));
        Assert.Contains("consecutive", Assert.Throws<ArgumentException>(() => NBitsWeight.From(permuted)).Message);
        using var q = Grid(8, 64, 4, 32, gen);
        q.Zeros[0, 0] = tensor(16);
        Assert.Contains("zero point 16", Assert.Throws<ArgumentException>(() => NBitsWeight.From(q)).Message);
        using var three = Grid(8, 64, 3, 32, gen);
        Assert.Throws<ArgumentException>(() => NBitsWeight.From(three));
    }

    /// <summary>A one-node model y = MatMulNBits(x, B, scales, zero points) built with our graph builder.</summary>
    static float[] OneNode(NBitsWeight w, float[] x)
    {
        var g = new OnnxGraphBuilder();
        g.Input("x", global::Onnx.TensorProto.Types.DataType.Float, "rows", w.K);
        g.Output("y", global::Onnx.TensorProto.Types.DataType.Float, "rows", w.N);
        g.Constant("b", global::Onnx.TensorProto.Types.DataType.Uint8, [w.N, w.Blocks, w.BlobBytes], w.Codes);
        g.Constant("s", global::Onnx.TensorProto.Types.DataType.Float, [w.N * w.Blocks], System.Runtime.InteropServices.MemoryMarshal.AsBytes(w.Scales.AsSpan()).ToArray());
        g.Constant("z", global::Onnx.TensorProto.Types.DataType.Uint8, [w.N * w.ZeroBytesPerRow], w.Zeros);
        g.NodeTo("MatMulNBits", "y", ["x", "b", "s", "z"], OnnxGraphBuilder.MicrosoftDomain,
            OnnxGraphBuilder.Int("K", w.K), OnnxGraphBuilder.Int("N", w.N), OnnxGraphBuilder.Int("bits", w.Bits), OnnxGraphBuilder.Int("block_size", w.BlockSize));
        var model = new global::Onnx.ModelProto { IrVersion = 8, Graph = g.Graph };
        model.OpsetImport.Add(new global::Onnx.OperatorSetIdProto { Domain = "", Version = 17 });
        model.OpsetImport.Add(new global::Onnx.OperatorSetIdProto { Domain = OnnxGraphBuilder.MicrosoftDomain, Version = 1 });
        using var session = new InferenceSession(Google.Protobuf.MessageExtensions.ToByteArray(model));
        long rows = x.Length / w.K;
        using var input = OrtValue.CreateTensorValueFromMemory(x, [rows, w.K]);
        using var options = new RunOptions();
        using var outputs = session.Run(options, new Dictionary<string, OrtValue> { ["x"] = input }, ["y"]);
        return outputs[0].GetTensorDataAsSpan<float>().ToArray();
    }
}
