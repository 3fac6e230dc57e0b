using DotQuant.Engine.Models;
using DotQuant.Engine.Quantizers;
using static TorchSharp.torch;

namespace DotQuant.Engine.Gguf.Grids;

/// <summary>How a 32-element GGUF block maps weights to codes, per output row, in the float operations
/// of llama.cpp's reference quantizer (so round-to-nearest on it gives llama-quantize's bytes):
/// symmetric types (Q4_0, Q5_0) take d = max/−2^(b−1) from the signed value of largest magnitude and
/// q = trunc(x·(1/d) + 2^(b−1) + ½); affine types (Q4_1, Q5_1) take d = (max − min)/(2^b − 1) and
/// q = trunc((x − min)·(1/d) + ½); Q8_0 takes d = absmax/127 and q = round(x/d) half away from zero.
/// Codes are clamped to the grid (a GPTQ-updated weight may leave the block's range, which the
/// reference never sees). Values decode as llama.cpp does: from d and m rounded to fp16.</summary>
public sealed class LegacyGrid : IColumnGrid
{
    public enum Rule { Symmetric, Affine, Q8 }

    readonly Rule _rule;
    readonly int _bits;
    /// <summary>fp32 d, its reciprocal as the reference forms it, and fp16-rounded d and m (as stored).</summary>
    readonly Tensor _inverse, _min;
    public Tensor D16 { get; }
    public Tensor M16 { get; }

    LegacyGrid(Rule rule, int bits, Tensor inverse, Tensor min, Tensor d16, Tensor m16)
    {
        _rule = rule; _bits = bits;
        _inverse = inverse.DetachFromDisposeScope();
        _min = min.DetachFromDisposeScope();
        D16 = d16.DetachFromDisposeScope();
        M16 = m16.DetachFromDisposeScope();
    }

    /// <summary>The grid of one block of columns w [m, 32].</summary>
    public static LegacyGrid Find(Rule rule, int bits, Tensor w)
    {
        using var scope = NewDisposeScope();
        var x = w.to(ScalarType.Float32);
        Tensor d, min;
        switch (rule)
        {
            case Rule.Symmetric:
                // The first element of largest magnitude, with its sign (argmax keeps the first).
                var max = x.gather(1, x.abs().argmax(1, keepdim: true)).squeeze(1);
                d = max.div(Scalars.Of(-(double)(1 << (bits - 1))));
                min = zeros_like(d);
                break;
            case Rule.Affine:
                min = x.amin([1]);
                d = (x.amax([1]) - min).div_(Scalars.Of((double)((1 << bits) - 1)));
                break;
            default:
                d = x.abs().amax([1]).div_(Scalars.Of(127.0));
                min = zeros_like(d);
                break;
        }
        var inverse = where(d.ne(Scalars.Of(0.0)), full_like(d, Scalars.Of(1.0)) / d, zeros_like(d));
        var d16 = d.to(ScalarType.Float16).to(ScalarType.Float32);
        var m16 = min.to(ScalarType.Float16).to(ScalarType.Float32);
        return new LegacyGrid(rule, bits, inverse, min, d16, m16);
    }

    double MaxCode => _rule == Rule.Q8 ? 255 : (1 << _bits) - 1;
    /// <summary>Symmetric codes are stored with this offset (Q8_0's signed bytes are shifted by 128 here).</summary>
    double Offset => _rule switch { Rule.Symmetric => 1 << (_bits - 1), Rule.Q8 => 128, _ => 0 };

    (Tensor, Tensor, Tensor, Tensor) Rows(Tensor x) => x.dim() == 1
        ? (_inverse, _min, D16, M16)
        : (_inverse.unsqueeze(1), _min.unsqueeze(1), D16.unsqueeze(1), M16.unsqueeze(1));

    public Tensor Codes(Tensor x, long column)
    {
        using var scope = NewDisposeScope();
        var (id, min, _, _) = Rows(x);
        var v = x.to(ScalarType.Float32);
        Tensor q = _rule switch
        {
            Rule.Symmetric => (v * id).add_(Scalars.Of(Offset + 0.5), Scalars.One).trunc_(),
            Rule.Affine => ((v - min) * id).add_(Scalars.Of(0.5), Scalars.One).trunc_(),
            _ => RoundHalfAway(v * id).add_(Scalars.Of(128.0), Scalars.One),
        };
        return scope.MoveToOuter(q.clamp_(Scalars.Of(0.0), Scalars.Of(MaxCode)).to(x.dtype));
    }

    public Tensor Dequantize(Tensor codes, long column)
    {
        using var scope = NewDisposeScope();
        var (_, _, d, m) = Rows(codes);
        var c = codes.to(ScalarType.Float32);
        var x = _rule == Rule.Affine ? (c * d).add_(m, Scalars.One) : c.sub(Scalars.Of(Offset)) * d;
        return scope.MoveToOuter(x.to(codes.dtype));
    }

    public (Tensor Min, Tensor Max) Range(long column)
    {
        var lo = Dequantize(zeros_like(D16), 0);
        var hi = Dequantize(full_like(D16, Scalars.Of(MaxCode)), 0);
        return (minimum(lo, hi), maximum(lo, hi));
    }

    /// <summary>C's roundf: ties away from zero (torch rounds ties to even).</summary>
    static Tensor RoundHalfAway(Tensor v)
    {
        var a = v.abs();
        var floor = a.floor();
        return where((a - floor).ge(Scalars.Of(0.5)), floor.add(Scalars.Of(1.0), Scalars.One), floor).mul_(v.sign());
    }

    public void Dispose()
    {
        _inverse.Dispose(); _min.Dispose(); D16.Dispose(); M16.Dispose();
    }
}
