using System.Text.Json.Nodes;

namespace DotQuant.Engine.Calibration;

/// <summary>What happened to one linear.</summary>
/// <param name="Loss">tr(ΔW H_λ ΔWᵀ) of the solver's result on the calibration statistics.</param>
/// <param name="RtnLoss">The same objective for round-to-nearest on the same grid: how much the calibrator gained.</param>
/// <param name="PaperBits">Average bits per weight as the method's paper counts them.</param>
/// <param name="StoredBits">Every bit the native format stores for the layer, per weight.</param>
/// <param name="Details">The solver's own fields for the layer's package entry (e.g. SpQR's outlier count).</param>
public sealed record LayerReport(string Name, int Block, long InFeatures, long OutFeatures, bool Quantized, int Bits, int GroupSize,
    double Loss, double Seconds, double Damp, double RtnLoss = double.NaN, double PaperBits = double.NaN, double StoredBits = double.NaN,
    string Kind = "grid", long Outliers = 0, long SalientColumns = 0, JsonObject? Details = null);

/// <summary>Bits per weight of a model: each quantized layer's figures weighted by its weight count
/// (NaN when nothing was quantized). One definition for dotquant.json, the CLI and the reports.</summary>
public readonly record struct ModelBits(double Paper, double Stored, double Weights)
{
    public static ModelBits Of(IEnumerable<LayerReport> layers)
    {
        var q = layers.Where(l => l.Quantized && double.IsFinite(l.PaperBits)).ToList();
        double weights = q.Sum(l => (double)l.InFeatures * l.OutFeatures);
        return new ModelBits(
            q.Sum(l => l.PaperBits * l.InFeatures * l.OutFeatures) / weights,
            q.Sum(l => l.StoredBits * l.InFeatures * l.OutFeatures) / weights,
            weights);
    }
}
