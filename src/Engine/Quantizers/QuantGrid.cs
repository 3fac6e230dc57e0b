using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Engine.Quantizers;

/// <summary>Which min–max grid family (spec §2.5). Both always contain 0.</summary>
public enum GridConvention
{
    /// <summary>GPTQ/HF (IST quant.py, AutoGPTQ, GPTQModel): sym scale = 2·absmax/(2^b−1), zero = 2^(b−1).</summary>
    Gptq,
    /// <summary>QuaRot (GPTAQ and ResComp repos): sym scale = absmax/(2^(b−1)−1), signed codes.</summary>
    QuaRot,
}

/// <summary>A per-output-row uniform grid: code = clamp(round(x/scale) + zero, 0, 2^b−1),
/// x̂ = scale·(code − zero). Every convention is expressed in this unsigned form (QuaRot's signed
/// codes are shifted by 2^(b−1)), which is exactly what the checkpoint formats store.</summary>
public sealed class QuantGrid : IColumnGrid
{
    public Tensor Scale { get; }   // [m]
    public Tensor Zero { get; }    // [m], integer-valued
    public int Bits { get; }
    public double MaxQ => (1 << Bits) - 1;

    public QuantGrid(Tensor scale, Tensor zero, int bits)
    {
        Scale = scale.DetachFromDisposeScope();
        Zero = zero.DetachFromDisposeScope();
        Bits = bits;
    }

    /// <summary>Integer codes (as floating tensor) for x [m] or [m, k] (rows = output channels).</summary>
    public Tensor Codes(Tensor x)
    {
        var (s, z) = Broadcast(x);
        return (x / s).round_().add_(z, Scalars.One).clamp_(Scalars.Of(0.0), Scalars.Of(MaxQ));
    }

    public Tensor Dequantize(Tensor codes)
    {
        var (s, z) = Broadcast(codes);
        return (codes - z).mul_(s);
    }

    public Tensor QuantizeDequantize(Tensor x)
    {
        using var c = Codes(x);
        return Dequantize(c);
    }

    /// <summary>The representable range per row: [(0 − zero)·scale, (maxq − zero)·scale].</summary>
    public (Tensor Min, Tensor Max) Range() => ((-Zero) * Scale, (-Zero).add(Scalars.Of(MaxQ), Scalars.One) * Scale);

    Tensor IColumnGrid.Codes(Tensor x, long column) => Codes(x);
    Tensor IColumnGrid.Dequantize(Tensor codes, long column) => Dequantize(codes);
    (Tensor Min, Tensor Max) IColumnGrid.Range(long column) => Range();

    (Tensor, Tensor) Broadcast(Tensor x) => x.dim() == 1 ? (Scale, Zero) : (Scale.unsqueeze(1), Zero.unsqueeze(1));

    public void Dispose()
    {
        Scale.Dispose();
        Zero.Dispose();
    }
}

/// <summary>Finds per-row grids from a weight slice [m, k] (spec §2.5), optionally with the
/// MSE clipping search of §2.5c, and optionally rounding scales to fp16 so the grid the solver
/// compensates against is exactly the grid the checkpoint stores.</summary>
public sealed record GridOptions(int Bits, bool Symmetric, GridConvention Convention = GridConvention.Gptq,
    bool MseClip = false, bool Fp16Scales = true, double MseNorm = 2.4, int MseGrid = 100, double MseMaxShrink = 0.8) : IGridFamily
{
    public int? BlockSize => null;
    public bool FreshGroups => false;
    IColumnGrid IGridFamily.Find(Tensor w) => Find(w);

    /// <summary>Codes with per-group scales and integer zeros: the layout the DotQuant and GPTQ formats store.</summary>
    public SolvedLinear Assemble(Tensor codes, IReadOnlyList<IColumnGrid> grids, Tensor gIdx, SolverOptions o, double loss, double damp)
    {
        var q = grids.Cast<QuantGrid>().ToArray();
        return new QuantizedLinear
        {
            Codes = codes.to(ScalarType.Byte, copy: true).DetachFromDisposeScope(),
            Scales = stack(q.Select(x => x.Scale)).DetachFromDisposeScope(),
            Zeros = stack(q.Select(x => x.Zero)).to(ScalarType.Int32).DetachFromDisposeScope(),
            GIdx = gIdx.to(ScalarType.Int32, copy: true).DetachFromDisposeScope(),
            Bits = o.Bits,
            GroupSize = o.GroupSize,
            Loss = loss,
            DampUsed = damp,
        };
    }

    public QuantGrid Find(Tensor w)
    {
        using var scope = NewDisposeScope();
        var xmin = w.amin([1]).clamp_max(Scalars.Of(0L));
        var xmax = w.amax([1]).clamp_min(Scalars.Of(0L));
        var (scale, zero) = FromRange(xmin, xmax);
        if (MseClip)
        {
            var best = full(w.shape[0], Scalars.Of(double.PositiveInfinity), dtype: w.dtype);
            int steps = (int)Math.Floor(MseMaxShrink * MseGrid);
            for (int i = 0; i < steps; i++)
            {
                using var inner = NewDisposeScope();
                double p = 1 - (double)i / MseGrid;
                var (s, z) = FromRange(xmin.mul(Scalars.Of(p)), xmax.mul(Scalars.Of(p)));
                using var g = new QuantGrid(s, z, Bits);
                var err = (g.QuantizeDequantize(w) - w).abs_().pow_(Scalars.Of(MseNorm)).sum([1]);
                var better = err.lt(best);                       // strict, as the reference
                best = inner.MoveToOuter(where(better, err, best));
                scale = inner.MoveToOuter(where(better, g.Scale, scale));
                zero = inner.MoveToOuter(where(better, g.Zero, zero));
            }
        }
        var grid = new QuantGrid(scale, zero, Bits);
        return grid;
    }

    (Tensor Scale, Tensor Zero) FromRange(Tensor xmin, Tensor xmax)
    {
        double maxq = (1 << Bits) - 1;
        Tensor scale, zero;
        if (Convention == GridConvention.Gptq)
        {
            if (Symmetric)
            {
                xmax = xmin.abs().maximum(xmax);
                xmin = where(xmin.lt(Scalars.Of(0L)), -xmax, xmin);      // only when xmin < 0 (spec §2.5a quirk ii)
            }
            var both0 = xmin.eq(Scalars.Of(0L)).logical_and(xmax.eq(Scalars.Of(0L)));
            xmin = xmin.masked_fill(both0, Scalars.Of(-1L));
            xmax = xmax.masked_fill(both0, Scalars.Of(1L));
            scale = RoundScale((xmax - xmin).div(Scalars.Of(maxq)));
            zero = Symmetric ? full_like(scale, Scalars.Of((maxq + 1) / 2)) : (-xmin / scale).round();
        }
        else if (Symmetric)
        {
            double half = (1 << (Bits - 1)) - 1;
            scale = RoundScale(xmin.abs().maximum(xmax).clamp_min(Scalars.Of(1e-5)).div(Scalars.Of(half)));
            zero = full_like(scale, Scalars.Of(half + 1));              // signed codes shifted to unsigned
        }
        else
        {
            var both0 = xmin.eq(Scalars.Of(0L)).logical_and(xmax.eq(Scalars.Of(0L)));
            xmin = xmin.masked_fill(both0, Scalars.Of(-1L));
            xmax = xmax.masked_fill(both0, Scalars.Of(1L));
            scale = RoundScale((xmax - xmin).clamp_min(Scalars.Of(1e-5)).div(Scalars.Of(maxq)));
            zero = (-xmin / scale).round();
        }
        return (scale, zero);
    }

    /// <summary>Scales as the checkpoint stores them (fp16), never rounded to zero.</summary>
    Tensor RoundScale(Tensor scale)
    {
        if (!Fp16Scales) return scale;
        var rounded = scale.to(ScalarType.Float16).to(scale.dtype);
        return rounded.clamp_min(Scalars.Of(5.96e-8));
    }
}
