using TorchSharp;
using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Engine.Hessians;

/// <summary>Per-input statistics of a linear group (spec §2.1): H = (2/N)·X_q X_qᵀ and, when the
/// float stream is used, D = (2/N)·(X_f − X_q) X_qᵀ, with N counting sequences as the reference
/// does. Accumulated in fp32 as sums and scaled once at the end.</summary>
public sealed class LayerStatistics : IDisposable
{
    Tensor? _h;
    Tensor? _d;
    int _sequences;

    public LayerStatistics(long inFeatures, bool withAsymmetry)
    {
        _h = zeros(inFeatures, inFeatures).DetachFromDisposeScope();
        _d = withAsymmetry ? zeros(inFeatures, inFeatures).DetachFromDisposeScope() : null;
    }

    /// <summary>Adds one sequence's inputs: x_q [.., n] and, with asymmetry, x_f of the same shape.</summary>
    public void Add(Tensor xq, Tensor? xf = null)
    {
        using var scope = NewDisposeScope();
        if (_h is null) throw new InvalidOperationException("the statistics were already handed over");
        using var phase = Calibration.PhaseClock.Measure("xtx");
        var q = xq.reshape(-1, xq.shape[^1]).to(ScalarType.Float32);
        _h.addmm_(q.t(), q, 1, 1);
        if (_d is not null)
        {
            if (xf is null) throw new ArgumentException("the float-stream input is required for D");
            var f = xf.reshape(-1, xf.shape[^1]).to(ScalarType.Float32);
            _d.addmm_((f - q).t(), q, 1, 1);
        }
        _sequences += (int)(xq.dim() == 3 ? xq.shape[0] : 1);
    }

    public int Sequences => _sequences;

    /// <summary>The final (2/N)-scaled H and D. The accumulators are scaled in place and handed over
    /// (the caller owns them): an 11008² H is not copied.</summary>
    public (Tensor H, Tensor? D) Finish()
    {
        if (_h is null) throw new InvalidOperationException("the statistics were already handed over");
        double scale = 2.0 / Math.Max(1, _sequences);
        Scalars.Use(scale, s =>
        {
            _h.mul_(s);
            return _d?.mul_(s);
        });
        var result = (_h, _d);
        _h = null;
        _d = null;
        return result;
    }

    public void Dispose()
    {
        _h?.Dispose();
        _d?.Dispose();
    }
}
