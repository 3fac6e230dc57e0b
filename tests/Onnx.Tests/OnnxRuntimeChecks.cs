using Microsoft.ML.OnnxRuntime;
using GenAi = Microsoft.ML.OnnxRuntimeGenAI;

namespace DotQuant.Onnx.Tests;

/// <summary>ONNX Runtime (an InferenceSession over model.onnx) and ONNX Runtime GenAI (the folder as an
/// app loads it): the implementations we did not write, asked what the files we wrote compute.</summary>
static class OnnxRuntimeChecks
{
    /// <summary>GPTQ-protocol perplexity from model.onnx: non-overlapping windows, no past, mean NLL of
    /// every predicted token, accumulated in double.</summary>
    public static double Perplexity(string folder, int[] ids, int length, int windows, int layers, int kvHeads, int headSize)
    {
        using var session = new InferenceSession(Path.Combine(folder, "model.onnx"));
        double nll = 0;
        for (int w = 0; w < windows; w++)
        {
            long[] window = ids.Skip(w * length).Take(length).Select(i => (long)i).ToArray();
            var logits = Logits(session, window, layers, kvHeads, headSize);
            int vocab = logits.Length / length;
            for (int t = 0; t < length - 1; t++)
            {
                var row = logits.AsSpan(t * vocab, vocab);
                double max = double.NegativeInfinity;
                foreach (var x in row) max = Math.Max(max, x);
                double sum = 0;
                foreach (var x in row) sum += Math.Exp(x - max);
                nll += Math.Log(sum) + max - row[(int)window[t + 1]];
            }
        }
        return Math.Exp(nll / ((double)windows * (length - 1)));
    }

    /// <summary>Logits [T, vocab] of one sequence with an empty cache.</summary>
    public static float[] Logits(InferenceSession session, long[] ids, int layers, int kvHeads, int headSize)
    {
        long t = ids.Length;
        var inputs = new Dictionary<string, OrtValue>
        {
            ["input_ids"] = OrtValue.CreateTensorValueFromMemory(ids, [1, t]),
            ["attention_mask"] = OrtValue.CreateTensorValueFromMemory(Enumerable.Repeat(1L, (int)t).ToArray(), [1, t]),
            ["position_ids"] = OrtValue.CreateTensorValueFromMemory(Enumerable.Range(0, (int)t).Select(i => (long)i).ToArray(), [1, t]),
        };
        for (int i = 0; i < layers; i++)
        {
            inputs[$"past_key_values.{i}.key"] = OrtValue.CreateTensorValueFromMemory(Array.Empty<float>(), [1, kvHeads, 0, headSize]);
            inputs[$"past_key_values.{i}.value"] = OrtValue.CreateTensorValueFromMemory(Array.Empty<float>(), [1, kvHeads, 0, headSize]);
        }
        try
        {
            using var options = new RunOptions();
            using var outputs = session.Run(options, inputs, ["logits"]);
            return outputs[0].GetTensorDataAsSpan<float>().ToArray();
        }
        finally
        {
            foreach (var v in inputs.Values) v.Dispose();
        }
    }

    /// <summary>Greedy generation as an app runs it: GenAI loads the folder, appends the prompt and
    /// generates <paramref name="count"/> tokens (no early stop at EOS).</summary>
    public static int[] Greedy(string folder, int[] prompt, int count)
    {
        using var model = new GenAi.Model(folder);
        using var parameters = new GenAi.GeneratorParams(model);
        parameters.SetSearchOption("max_length", prompt.Length + count);
        parameters.SetSearchOption("min_length", prompt.Length + count);
        using var generator = new GenAi.Generator(model, parameters);
        generator.AppendTokens(prompt);
        while (!generator.IsDone()) generator.GenerateNextToken();
        return generator.GetSequence(0).ToArray()[prompt.Length..];
    }

    /// <summary>GenAI's tokenizer (ONNX Runtime Extensions over tokenizer.json) on <paramref name="text"/>.</summary>
    public static int[] Encode(string folder, string text)
    {
        using var model = new GenAi.Model(folder);
        using var tokenizer = new GenAi.Tokenizer(model);
        using var sequences = tokenizer.Encode(text);
        return sequences[0].ToArray();
    }
}
