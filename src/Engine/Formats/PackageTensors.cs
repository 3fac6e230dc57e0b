using DotQuant.Runtime;
using DotQuant.Engine.IO;
using static TorchSharp.torch;

namespace DotQuant.Engine.Formats;

/// <summary>Reads a package tensor only if its dtype and shape are the ones the layout implies
/// (a truncated or hostile package fails with DQ0153 instead of a wrong weight).</summary>
public static class PackageTensors
{
    public static Tensor Expect(Checkpoint checkpoint, string name, ScalarType dtype, params long[] shape)
    {
        if (!checkpoint.Contains(name))
            throw new DotQuantException(ErrorCodes.PackageRead, $"the package has no '{name}'", checkpoint.Directory);
        var info = checkpoint.Info(name);
        if (info.DType.ToTorch() != dtype || !info.Shape.SequenceEqual(shape))
            throw new DotQuantException(ErrorCodes.PackageRead,
                $"'{name}' is {info.DType} [{string.Join(", ", info.Shape)}], expected {SafeTensorsDTypes.FromTorch(dtype)} [{string.Join(", ", shape)}]", checkpoint.Directory);
        return checkpoint.Load(name);
    }
}
