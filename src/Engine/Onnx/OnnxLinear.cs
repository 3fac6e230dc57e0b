using static DotQuant.Engine.Onnx.OnnxGraphBuilder;

namespace DotQuant.Engine.Onnx;

/// <summary>How a linear is stored in the ONNX file: a MatMulNBits weight (its three initializers) or a
/// float weight transposed to [in, out] for MatMul; and its bias, if any. AccuracyLevel is MatMulNBits'
/// compute type (0: fp32 activations; 4: activations rounded to int8, ORT's fast CPU kernels).</summary>
internal sealed record OnnxLinear(string Name, long In, long Out, NBitsShape? NBits, string? Bias, int AccuracyLevel = 0)
{
    public static string QWeight(string linear) => linear + ".qweight";
    public static string Scales(string linear) => linear + ".scales";
    public static string QZeros(string linear) => linear + ".qzeros";
    /// <summary>A float linear's weight, stored [in, out].</summary>
    public static string Transposed(string linear) => linear + ".weight_t";

    /// <summary>y = x·Wᵀ (+ b): MatMulNBits on the codes, or MatMul on the float weight.</summary>
    public string Apply(OnnxGraphBuilder g, string x)
    {
        string y = NBits is { } nb
            ? g.Node("MatMulNBits", Name, [x, QWeight(Name), Scales(Name), QZeros(Name)], 1, MicrosoftDomain,
                Int("K", In), Int("N", Out), Int("bits", nb.Bits), Int("block_size", nb.BlockSize), Int("accuracy_level", AccuracyLevel))[0]
            : g.Op("MatMul", Name, x, Transposed(Name));
        return Bias is null ? y : g.Op("Add", Name + ".bias_add", y, Bias);
    }
}

internal sealed record NBitsShape(int Bits, int BlockSize);
