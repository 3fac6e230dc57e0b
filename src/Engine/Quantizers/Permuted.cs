using static TorchSharp.torch;

namespace DotQuant.Engine.Quantizers;

/// <summary>Act-order permutations that free the unpermuted matrix at once (an n² Hessian is not
/// kept twice).</summary>
static class Permuted
{
    public static Tensor Columns(Tensor x, Tensor perm)
    {
        var result = x.index_select(1, perm);
        x.Dispose();
        return result;
    }

    public static Tensor Both(Tensor x, Tensor perm)
    {
        var rows = x.index_select(0, perm);
        x.Dispose();
        var result = rows.index_select(1, perm);
        rows.Dispose();
        return result;
    }
}
