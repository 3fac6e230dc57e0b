namespace DotQuant.Engine.Quantizers;

/// <summary>SpQR's knobs (spec §3.3, §3.8); defaults are the README configuration.</summary>
public sealed record SpqrOptions
{
    public int Bits { get; init; } = 2;
    /// <summary>β1: input columns sharing one scale and zero.</summary>
    public int GroupSize { get; init; } = 16;
    /// <summary>b_s, b_z: bits of the quantized scales and zeros (16 = kept in fp16).</summary>
    public int ScaleBits { get; init; } = 3;
    public int ZeroBits { get; init; } = 3;
    /// <summary>β2: consecutive rows whose scales (zeros) share one second-level grid.</summary>
    public int StatGroupSize { get; init; } = 16;
    /// <summary>τ_rel; +∞ disables outliers.</summary>
    public double OutlierThreshold { get; init; } = 0.2;
    public bool ActOrder { get; init; } = true;
    /// <summary>percdamp: SpQR's README uses 1.0 (the code default is 0.01).</summary>
    public double Damp { get; init; } = 1.0;
    public int BlockSize { get; init; } = 128;
    public TorchSharp.torch.ScalarType DType { get; init; } = TorchSharp.torch.ScalarType.Float32;

    public bool Outliers => double.IsFinite(OutlierThreshold);

    /// <summary>SpQR eq. (4): b_w + (b_s + b_z)/β1 + 2·(16+16)/(β1·β2) + 32·r_o.</summary>
    public static double AverageBits(int bits, int scaleBits, int zeroBits, int beta1, int beta2, double outlierFraction) =>
        bits + (double)(scaleBits + zeroBits) / beta1 + 64.0 / (beta1 * beta2) + 32 * outlierFraction;
}
