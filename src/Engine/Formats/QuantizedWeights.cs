using DotQuant.Runtime;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using DotQuant.Engine.Quantizers;
using static TorchSharp.torch;

namespace DotQuant.Engine.Formats;

/// <summary>How one quantized linear is stored.</summary>
/// <param name="ZeroOffset">Added to stored zeros on read: 1 for GPTQ v1 (which stores zero − 1), else 0.</param>
/// <param name="PackedZeros">GPTQ packs zeros along the output dimension (qzeros); the native format stores U8.</param>
/// <param name="Kind">grid (RTN/GPTQ/GPTAQ codes + scales), spqr or billm.</param>
/// <param name="Layer">The layer's dotquant.json entry (scheme-specific fields).</param>
public sealed record QuantizedLayout(string Prefix, int Bits, int GroupSize, long InFeatures, long OutFeatures, int ZeroOffset, bool PackedZeros,
    string Kind = "grid", System.Text.Json.Nodes.JsonNode? Layer = null);

/// <summary>A checkpoint whose listed linears are stored as codes + grids: <c>PREFIX.weight</c>
/// is synthesized by dequantizing, exactly as the solver computed it (fp16 scales, fp32 math).</summary>
public sealed class QuantizedWeights(Checkpoint checkpoint, IReadOnlyDictionary<string, QuantizedLayout> layouts) : IWeightSource, IDisposable
{
    public string Directory => checkpoint.Directory;
    public Checkpoint Checkpoint => checkpoint;
    public IReadOnlyDictionary<string, QuantizedLayout> Layouts => layouts;

    IReadOnlyList<string>? _names;

    /// <summary>The model's logical tensors: every stored tensor that is not part of a quantized
    /// linear, plus <c>PREFIX.weight</c> for each quantized one.</summary>
    public IReadOnlyList<string> Names => _names ??= checkpoint.Names
        .Where(n => !layouts.Keys.Any(p => n.StartsWith(p + ".", StringComparison.Ordinal)))
        .Concat(layouts.Keys.Select(p => p + ".weight"))
        .Order(StringComparer.Ordinal).ToList();

    public Tensor LoadRows(string name, Tensor rows) => checkpoint.LoadRows(name, rows);

    static string? PrefixOf(string name) => name.EndsWith(".weight", StringComparison.Ordinal) ? name[..^".weight".Length] : null;

    public bool Contains(string name) =>
        PrefixOf(name) is { } p && layouts.ContainsKey(p) || checkpoint.Contains(name);

    public Tensor LoadStored(string name) => checkpoint.Load(name);

    public TensorShape? Describe(string name) =>
        PrefixOf(name) is { } p && layouts.TryGetValue(p, out var l)
            ? new TensorShape(ScalarType.Float32, [l.OutFeatures, l.InFeatures])
            : checkpoint.Describe(name);

    public Tensor Load(string name, params long[] expectedShape)
    {
        if (PrefixOf(name) is not { } p || !layouts.TryGetValue(p, out var layout))
            return checkpoint.Load(name, expectedShape);
        if (expectedShape.Length != 2 || expectedShape[0] != layout.OutFeatures || expectedShape[1] != layout.InFeatures)
            throw new DotQuantException(ErrorCodes.WeightShape, $"quantized '{p}' is [{layout.OutFeatures}, {layout.InFeatures}], config.json implies [{string.Join(", ", expectedShape)}]", Directory);
        using SolvedLinear q = layout.Kind switch
        {
            "spqr" => SpqrLinear.Read(checkpoint, p, layout.OutFeatures, layout.InFeatures, layout.Bits, layout.Layer!),
            "billm" => BinaryLinear.Read(checkpoint, p, layout.OutFeatures, layout.InFeatures, layout.Layer!),
            _ => Read(layout),
        };
        return q.Dequantize();
    }

    /// <summary>The stored codes and grids of one layer, validated against its layout.</summary>
    public QuantizedLinear Read(QuantizedLayout l)
    {
        int m = checked((int)l.OutFeatures), n = checked((int)l.InFeatures);
        int groups = l.GroupSize == -1 ? 1 : (n + l.GroupSize - 1) / l.GroupSize;
        using var scope = NewDisposeScope();
        var qweight = Expect(l.Prefix + ".qweight", ScalarType.Int32, BitPacking.Words(n, l.Bits), m);
        var scales = Expect(l.Prefix + ".scales", ScalarType.Float16, groups, m);
        var gIdx = Expect(l.Prefix + ".g_idx", ScalarType.Int32, n);
        byte[] zeroBytes;
        if (l.PackedZeros)
        {
            var qzeros = Expect(l.Prefix + ".qzeros", ScalarType.Int32, groups, BitPacking.Words(m, l.Bits));
            zeroBytes = BitPacking.UnpackRows(qzeros.data<int>().ToArray(), groups, m, l.Bits);
        }
        else
        {
            zeroBytes = Expect(l.Prefix + ".zeros", ScalarType.Byte, groups, m).data<byte>().ToArray();
        }
        var codes = BitPacking.UnpackColumns(qweight.data<int>().ToArray(), m, n, l.Bits);
        var g = gIdx.data<int>().ToArray();
        if (g.Any(x => x < 0 || x >= groups))
            throw new DotQuantException(ErrorCodes.PackageRead, $"{l.Prefix}.g_idx has a group outside [0, {groups})", Directory);
        var zerosT = tensor(zeroBytes.Select(z => (int)z + l.ZeroOffset).ToArray(), [groups, m]);
        var result = new QuantizedLinear
        {
            Codes = scope.MoveToOuter(tensor(codes, [m, n])),
            Scales = scope.MoveToOuter(scales.to(ScalarType.Float32)),
            Zeros = scope.MoveToOuter(zerosT),
            GIdx = scope.MoveToOuter(gIdx.clone()),
            Bits = l.Bits,
            GroupSize = l.GroupSize,
        };
        return result;
    }

    Tensor Expect(string name, ScalarType dtype, params long[] shape) => PackageTensors.Expect(checkpoint, name, dtype, shape);

    public void Dispose() => checkpoint.Dispose();
}
