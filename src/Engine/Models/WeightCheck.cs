using DotQuant.Runtime;
using static TorchSharp.torch;

namespace DotQuant.Engine.Models;

/// <summary>The one check every weight a model binds goes through: present (DQ0124), floating point
/// and of the shape config.json implies (DQ0125).</summary>
public static class WeightCheck
{
    public static TensorShape Expect(IWeightSource source, string name, long[] shape)
    {
        var d = source.Describe(name)
            ?? throw new DotQuantException(ErrorCodes.WeightMissing, $"weight '{name}' is missing from the checkpoint in {source.Directory}", source.Directory);
        if (d.DType is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16 or ScalarType.Float64))
            throw new DotQuantException(ErrorCodes.WeightShape,
                $"weight '{name}' is {IO.SafeTensorsDTypes.FromTorch(d.DType)}; a floating-point tensor (F32, BF16, F16) is expected", source.Directory);
        if (!d.Shape.SequenceEqual(shape))
            throw new DotQuantException(ErrorCodes.WeightShape,
                $"weight '{name}' has shape [{string.Join(", ", d.Shape)}], config.json implies [{string.Join(", ", shape)}]", source.Directory);
        return d;
    }
}
