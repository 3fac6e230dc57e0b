using DotQuant.Engine.Manifest;

namespace DotQuant.Engine.Hessians;

/// <summary>The Hessian source a manifest asks for: none for round-to-nearest, OAC's output-adaptive
/// Hessians, GPTAQ's asymmetric statistics (the float stream), or the layer-wise H.</summary>
public static class HessianSources
{
    /// <param name="staged">Keep the layer-wise capture's states between groups (the memory plan's call).</param>
    /// <param name="firstSequence">The number of the stream's first sequence in the run (a shard's offset).</param>
    public static IHessianSource For(QuantizeSpec q, bool staged = false, int firstSequence = 0) =>
        !q.NeedsCalibration ? new NoHessian()
        : !q.Scheme.NeedsCalibration ? new NoHessian(keepsStream: true)
        : q.Oac is { } oac ? new OutputAdaptiveSource(oac, firstSequence)
        : q.NeedsFloatStream ? new AsymmetricHessian()
        : new LayerHessian(staged);
}
