using System.Text.Json.Nodes;

namespace DotQuant.Engine.Awq;

/// <summary>quantize.awq (spec §6.2, llm-awq's auto_scale and auto_clip defaults): a grid of
/// <see cref="Grid"/> exponents α ∈ {0, 1/Grid, …} for the scales s = s_x^α, then (with <see cref="Clip"/>)
/// the clipping search over max = amax·(1 − i/ClipGrid), i &lt; MaxShrink·ClipGrid, on
/// <see cref="ClipTokens"/> strided tokens.</summary>
public sealed record AwqOptions
{
    public int Grid { get; init; } = 20;
    public bool Clip { get; init; } = true;
    public int ClipGrid { get; init; } = 20;
    public double MaxShrink { get; init; } = 0.5;
    public int ClipTokens { get; init; } = 512;

    public JsonObject ToJson() => new()
    {
        ["grid"] = Grid, ["clip"] = Clip, ["clip_grid"] = ClipGrid, ["max_shrink"] = MaxShrink, ["clip_tokens"] = ClipTokens,
    };
}
