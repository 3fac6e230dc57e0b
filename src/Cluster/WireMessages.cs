using System.Text.Json.Nodes;
using DotQuant.Engine.Quantizers;
using static TorchSharp.torch;

namespace DotQuant.Cluster;

/// <summary>A solved linear's wire form (<see cref="WireLinear"/>) as grain calls carry it: a
/// <see cref="WireHeader"/> and each tensor's chunks, and back.</summary>
static class WireMessages
{
    public static WireHeader Header(WireLinear w) =>
        new(w.Kind, w.Fields.ToJsonString(), w.Tensors.Select(t => t.Name).ToArray(), w.Tensors.Select(t => TensorChunks.Header(t.Tensor)).ToArray());

    /// <summary>Every tensor's chunks, in the header's order.</summary>
    public static byte[][][] Chunks(WireLinear w) => w.Tensors.Select(t => TensorChunks.All(t.Tensor)).ToArray();

    /// <summary>The wire form <paramref name="header"/> describes over <paramref name="tensors"/> (now owned by it), in the header's order.</summary>
    public static WireLinear Open(WireHeader header, IReadOnlyList<Tensor> tensors) =>
        new(header.Kind, (JsonObject)JsonNode.Parse(header.Fields)!, header.Names.Zip(tensors).ToList());
}
