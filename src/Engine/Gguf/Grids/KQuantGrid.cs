using DotQuant.Engine.Gguf.Blocks;
using DotQuant.Engine.Models;
using DotQuant.Engine.Quantizers;
using static TorchSharp.torch;

namespace DotQuant.Engine.Gguf.Grids;

/// <summary>One k-quant super-block of 256 input columns, per output row: llama.cpp's scale search run
/// on the weights as they are when the column loop reaches the super-block (GPTQ's error-updated
/// weights), its sub-block scales and mins quantized and stored exactly as the file will hold them;
/// every column is then coded against its sub-block's stored scale as the reference recodes
/// (round half to even, clamped). Where a sub-block's scale quantized to zero every code decodes to the
/// same value, and the search's codes are kept so round-to-nearest gives llama-quantize's bytes.</summary>
public sealed class KQuantGrid : IColumnGrid
{
    readonly KQuantCodec _codec;
    /// <summary>Per row and sub-block: d and m as decoded (value = d·(code − offset) − m) [rows, subs].</summary>
    readonly Tensor _d, _m;
    /// <summary>The search's codes [rows, 256] (used where d = 0).</summary>
    readonly Tensor _fallback;

    /// <summary>Per row: the block header (packed scales and fp16 super-block scales) [rows · header bytes].</summary>
    public byte[] Headers { get; }

    KQuantGrid(KQuantCodec codec, byte[] headers, Tensor d, Tensor m, Tensor fallback)
    {
        _codec = codec;
        Headers = headers;
        _d = d.DetachFromDisposeScope();
        _m = m.DetachFromDisposeScope();
        _fallback = fallback.DetachFromDisposeScope();
    }

    /// <param name="importance">Per column of the super-block [256]: llama.cpp's weighted search
    /// (ω = imp·√(σ² + x²)) instead of the unweighted one.</param>
    public static KQuantGrid Find(KQuantCodec codec, Tensor w, Tensor? importance = null)
    {
        int rows = (int)w.shape[0], qk = GgmlTypeInfo.SuperBlock, hb = codec.HeaderBytes, subs = codec.SubBlocks;
        using var x = w.to(ScalarType.Float32).contiguous();
        var values = x.data<float>().ToArray();
        float[]? imp = null;
        if (importance is not null)
        {
            using var i = importance.to(ScalarType.Float32).contiguous();
            imp = i.data<float>().ToArray();
        }
        var headers = new byte[rows * hb];
        var codes = new byte[rows * qk];
        var d = new float[rows * subs];
        var m = new float[rows * subs];
        for (int r = 0; r < rows; r++)
        {
            var header = headers.AsSpan(r * hb, hb);
            if (imp is null) codec.Search(values.AsSpan(r * qk, qk), header, codes.AsSpan(r * qk, qk));
            else codec.Search(values.AsSpan(r * qk, qk), imp, header, codes.AsSpan(r * qk, qk));
            codec.SubScales(header, d.AsSpan(r * subs, subs), m.AsSpan(r * subs, subs));
        }
        using var scope = NewDisposeScope();
        return new KQuantGrid(codec, headers, tensor(d, [rows, subs]), tensor(m, [rows, subs]),
            tensor(codes, [rows, qk]).to(ScalarType.Float32));
    }

    /// <summary>d and m of each column in [column, column + k), as [rows, k].</summary>
    (Tensor D, Tensor M) Columns(long column, long k)
    {
        var subs = arange(Scalars.Of(column), Scalars.Of(column + k), Scalars.Of(1L), dtype: ScalarType.Int64).div_(Scalars.Of((long)_codec.SubBlock), rounding_mode: RoundingMode.floor);
        return (_d.index_select(1, subs), _m.index_select(1, subs));
    }

    public Tensor Codes(Tensor x, long column)
    {
        using var scope = NewDisposeScope();
        bool vector = x.dim() == 1;
        var v = (vector ? x.unsqueeze(1) : x).to(ScalarType.Float32);
        var (d, m) = Columns(column, v.shape[1]);
        int offset = _codec.Offset, max = _codec.MaxCode;
        var q = offset == 0
            ? v.add(m, Scalars.One).div_(d).round_().clamp_(Scalars.Of(0.0), Scalars.Of((double)max))
            : (v / d).round_().clamp_(Scalars.Of((double)-offset), Scalars.Of((double)(max - offset))).add_(Scalars.Of((double)offset), Scalars.One);
        q = where(d.eq(Scalars.Of(0L)), _fallback.narrow(1, column, v.shape[1]), q);
        if (vector) q = q.squeeze(1);
        return scope.MoveToOuter(q.to(x.dtype));
    }

    public Tensor Dequantize(Tensor codes, long column)
    {
        using var scope = NewDisposeScope();
        bool vector = codes.dim() == 1;
        var c = (vector ? codes.unsqueeze(1) : codes).to(ScalarType.Float32);
        var (d, m) = Columns(column, c.shape[1]);
        var x = d * c.sub(Scalars.Of((double)_codec.Offset)) - m;
        if (vector) x = x.squeeze(1);
        return scope.MoveToOuter(x.to(codes.dtype));
    }

    public (Tensor Min, Tensor Max) Range(long column)
    {
        using var scope = NewDisposeScope();
        var (d, m) = Columns(column, 1);
        var lo = d.mul(Scalars.Of((double)-_codec.Offset)).sub_(m).squeeze(1);
        var hi = d.mul(Scalars.Of((double)(_codec.MaxCode - _codec.Offset))).sub_(m).squeeze(1);
        return (scope.MoveToOuter(minimum(lo, hi)), scope.MoveToOuter(maximum(lo, hi)));
    }

    public void Dispose()
    {
        _d.Dispose(); _m.Dispose(); _fallback.Dispose();
    }
}

/// <summary>A linear solved on k-quant super-blocks: codes [out, in] (0..max, symmetric types offset)
/// and each super-block's header per row, packed into llama.cpp's block layout on demand.</summary>
public sealed class KQuantLinear(GgmlType type, Tensor codes, byte[][] headers) : GgufRowsLinear
{
    public override GgmlType Type => type;
    public override long OutFeatures => codes.shape[0];
    public override long InFeatures => codes.shape[1];

    public override byte[] EncodeRows(long first, long count)
    {
        var codec = (KQuantCodec)BlockCodec.For(type);
        int n = (int)InFeatures, qk = GgmlTypeInfo.SuperBlock, blocks = n / qk, size = codec.Info.TypeSize, hb = codec.HeaderBytes;
        var bytes = new byte[count * blocks * size];
        using var c = codes.narrow(0, first, count).contiguous();
        var all = c.data<byte>().ToArray();
        for (int r = 0; r < count; r++)
            for (int b = 0; b < blocks; b++)
                codec.Pack(headers[b].AsSpan((int)(first + r) * hb, hb), all.AsSpan(r * n + b * qk, qk),
                    bytes.AsSpan((r * blocks + b) * size, size));
        return bytes;
    }

    public override void Dispose() => codes.Dispose();
}
