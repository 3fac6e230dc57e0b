using static TorchSharp.torch;

namespace DotQuant.Engine.Models;

/// <summary>Where a block can take a per-channel scale s on the input of one true-sequential group and
/// give 1/s to the operation before it, leaving the float block's function unchanged (AWQ's scaling
/// points, spec §6.2): the previous op is a norm's weight, or the output rows of a linear (v before o,
/// up before down). <see cref="Channels"/> is the previous op's width; <see cref="Expand"/> maps a scale
/// over those channels to the group's input columns (the identity, or GQA's head repetition, where one v
/// channel feeds <see cref="Repeat"/> consecutive head copies of o's input).</summary>
public sealed class ScalingPoint
{
    /// <summary>The true-sequential group whose linears take s on their input columns.</summary>
    public required int Group { get; init; }
    public required long Channels { get; init; }
    /// <summary>o's input repeats each v head this many times (GQA); 1 elsewhere.</summary>
    public int Repeat { get; init; } = 1;
    public int HeadDim { get; init; } = 1;
    /// <summary>Divides the previous op's output channels by s (in place, so the block computes with it).</summary>
    public required Action<Tensor> DivideInto { get; init; }
    /// <summary>The stored tensors <see cref="DivideInto"/> changes with their current values (written in place
    /// of the checkpoint's).</summary>
    public required Func<IReadOnlyDictionary<string, Tensor>> Changed { get; init; }

    /// <summary>s over <see cref="Channels"/> → the group's input columns.</summary>
    public Tensor Expand(Tensor s) => Repeat == 1 ? s.alias()
        : s.view(-1, 1, HeadDim).expand(-1, Repeat, HeadDim).reshape(-1);

    /// <summary>Per-input-column statistics [in] → per channel [Channels] (the mean over a v channel's copies).</summary>
    public Tensor Reduce(Tensor perColumn) => Repeat == 1 ? perColumn.alias()
        : perColumn.view(-1, Repeat, HeadDim).mean([1]).reshape(-1);
}
