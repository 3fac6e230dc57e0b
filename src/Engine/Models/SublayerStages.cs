using static TorchSharp.torch;

namespace DotQuant.Engine.Models;

/// <summary>The stages of a block made of an attention sublayer and an MLP sublayer, each added to the
/// residual stream, whose true-sequential groups are [q/k/v], [o], [gate/up or fc], [down or proj]:
/// begin (the input norm), attention (to o's input), output (o, the residual, the MLP's norm: to the MLP
/// input), activation (to down's input), finish (down and the residual). A family supplies the five
/// functions (with its observer, or none for staged calibration); <see cref="Forward"/> composes them, and
/// is the family's block forward, so staged and whole forwards are the same operations.</summary>
public sealed class SublayerStages(
    Func<Tensor, Tensor> begin,
    Func<Tensor, ForwardContext, Tensor> attention,
    Func<Tensor, Tensor, (Tensor Residual, Tensor MlpInput)> output,
    Func<Tensor, Tensor> activation,
    Func<Tensor, Tensor, Tensor> finish) : IStagedBlock
{
    /// <summary>The whole block: the five functions in order.</summary>
    public Tensor Forward(Tensor hidden, ForwardContext ctx)
    {
        using var scope = NewDisposeScope();
        var attn = attention(begin(hidden), ctx);
        var (residual, mlpInput) = output(hidden, attn);
        return scope.MoveToOuter(finish(residual, activation(mlpInput)));
    }

    public BlockState Begin(Tensor hidden, ForwardContext ctx)
    {
        using var scope = NewDisposeScope();
        return new BlockState(hidden.alias().DetachFromDisposeScope(), begin(hidden).DetachFromDisposeScope());
    }

    public BlockState Next(int group, BlockState s, ForwardContext ctx)
    {
        using var scope = NewDisposeScope();
        switch (group)
        {
            case 0: return new BlockState(s.Residual.alias().DetachFromDisposeScope(), attention(s.Input, ctx).DetachFromDisposeScope());
            case 1:
                var (residual, mlpInput) = output(s.Residual, s.Input);
                return new BlockState(residual.DetachFromDisposeScope(), mlpInput.DetachFromDisposeScope());
            case 2: return new BlockState(s.Residual.alias().DetachFromDisposeScope(), activation(s.Input).DetachFromDisposeScope());
            default: throw new ArgumentOutOfRangeException(nameof(group), "the last group's input goes to Finish");
        }
    }

    public Tensor Finish(BlockState s, ForwardContext ctx)
    {
        using var scope = NewDisposeScope();
        return scope.MoveToOuter(finish(s.Residual, s.Input));
    }
}
