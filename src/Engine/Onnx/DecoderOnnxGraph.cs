using DotQuant.Runtime;
using DotQuant.Engine.IO;
using Onnx;
using static DotQuant.Engine.Onnx.OnnxGraphBuilder;

namespace DotQuant.Engine.Onnx;

/// <summary>The decoder graph ONNX Runtime GenAI runs: inputs input_ids, attention_mask, position_ids and
/// past_key_values.{i}.key/value [batch, kv heads, past, head size]; outputs logits [batch, seq, vocab]
/// and present.{i}.key/value. The family (<see cref="OnnxFamily"/>) supplies the embedding, the blocks
/// and the final norm; the head is MatMulNBits (output.onnx.head int8/int4), or a Gemm with transB over
/// the stored fp32 [vocab, hidden] rows (tied embeddings need no copy). Everything is fp32, like the engine's evaluation, with
/// com.microsoft.MatMulNBits for every quantized linear.</summary>
internal static class DecoderOnnxGraph
{
    /// <summary>DQ0122 unless the graph can express the model exactly.</summary>
    public static void Check(ModelConfig c, string source)
    {
        if (!OnnxFamily.Covers(c))
            throw new DotQuantException(ErrorCodes.UnsupportedModelType,
                $"format 'onnx' cannot express model_type '{c.ModelType}' yet (the ONNX graph covers {string.Join(", ", OnnxFamily.ModelTypes)}); use format 'gguf' or 'dotquant'", source);
    }

    public static GraphProto Build(ModelConfig c, Func<string, OnnxLinear> linear, Func<string, bool> stored)
    {
        var g = new OnnxGraphBuilder();
        const TensorProto.Types.DataType F = TensorProto.Types.DataType.Float, I64 = TensorProto.Types.DataType.Int64;
        g.Input("input_ids", I64, "batch_size", "sequence_length");
        g.Input("attention_mask", I64, "batch_size", "total_sequence_length");
        g.Input("position_ids", I64, "batch_size", "sequence_length");
        for (int i = 0; i < c.NumLayers; i++)
        {
            g.Input(OnnxAttention.PastKey(i), F, "batch_size", c.NumKvHeads, "past_sequence_length", c.HeadDim);
            g.Input(OnnxAttention.PastValue(i), F, "batch_size", c.NumKvHeads, "past_sequence_length", c.HeadDim);
        }
        g.Output("logits", F, "batch_size", "sequence_length", c.VocabSize);

        var family = OnnxFamily.For(g, c, linear, stored);
        var h = family.Embed();
        for (int i = 0; i < c.NumLayers; i++)
        {
            g.Output(OnnxAttention.PresentKey(i), F, "batch_size", c.NumKvHeads, "total_sequence_length", c.HeadDim);
            g.Output(OnnxAttention.PresentValue(i), F, "batch_size", c.NumKvHeads, "total_sequence_length", c.HeadDim);
            h = family.Block(i, h);
        }
        var normed = family.FinalNorm(h);
        var head = linear(Formats.OnnxPackageWriter.HeadLinear);
        if (head.NBits is not null)
        {
            g.NodeTo("Identity", "logits", [family.CapLogits(head.Apply(g, normed))]);
            return g.Graph;
        }
        var flat = g.Op("Reshape", "head_flatten", normed, g.Int64s("head_flat_shape", -1, c.HiddenSize));
        var logits2d = family.CapLogits(g.Node("Gemm", "lm_head_fp32", [flat, family.HeadWeight], 1, "", Int("transB", 1))[0]);
        var batchSeq = g.Node("Slice", "batch_seq", [g.Op("Shape", "ids_shape", "input_ids"), g.Int64s("zero", 0), g.Int64s("two", 2)])[0];
        var shape = g.Node("Concat", "logits_shape", [batchSeq, g.Int64s("vocab", c.VocabSize)], 1, "", Int("axis", 0))[0];
        g.NodeTo("Reshape", "logits", [logits2d, shape]);
        return g.Graph;
    }
}
