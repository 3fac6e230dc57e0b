namespace DotQuant.Engine.Quantizers;

/// <summary>How BiLLM scores salience (spec §4.6 #1, #2).</summary>
public enum SalienceMetric
{
    /// <summary>The code: S = W²/U_jj² with U = chol(H⁻¹) upper, searches run on S.</summary>
    Hessian,
    /// <summary>The paper: S = W²/[H⁻¹]_jj².</summary>
    HessianInverseDiagonal,
    /// <summary>S = W (argparse default of the reference code).</summary>
    Magnitude,
}

/// <summary>BiLLM's knobs (spec §4.2 defaults).</summary>
public sealed record BillmOptions
{
    /// <summary>Columns per block; the block is also the binarization group.</summary>
    public int BlockSize { get; init; } = 128;
    public double Damp { get; init; } = 0.01;
    public SalienceMetric Metric { get; init; } = SalienceMetric.Hessian;
    /// <summary>Run the salient-count and split searches on S (code) or on W (paper).</summary>
    public bool SearchOnSalience { get; init; } = true;
    /// <summary>Columns ranked for the salient search; k* ∈ [1, MaxSalient − 1].</summary>
    public int MaxSalient { get; init; } = 50;
    public TorchSharp.torch.ScalarType DType { get; init; } = TorchSharp.torch.ScalarType.Float32;
}
