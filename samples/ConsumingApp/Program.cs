using System.Diagnostics;
using DotQuant.Runtime;
using LLama;
using LLama.Common;
using LLama.Native;

// Usage: ConsumingApp [PROMPT] [--model FILE.gguf]
// By default it runs the GGUF the build quantized (quant.yaml's output.name), from the files beside
// the app or from the assembly's resources when quant.yaml says embed: true.
string prompt = args.Length > 0 && !args[0].StartsWith("--") ? args[0] : "Once upon a time";
int at = Array.IndexOf(args, "--model");
try
{
    string path = at >= 0 && at + 1 < args.Length ? args[at + 1] : ModelLocator.FindGguf("stories260K");
    NativeLibraryConfig.All.WithLogCallback((level, message) => { });
    var parameters = new ModelParams(path) { ContextSize = 256, GpuLayerCount = 0 };
    using var weights = LLamaWeights.LoadFromFile(parameters);
    using var context = weights.CreateContext(parameters);

    // Greedy decoding: the prompt in one batch, then the most likely token, one at a time.
    var vocab = weights.Vocab;
    var tokens = context.Tokenize(prompt, addBos: true);
    var decoder = new StreamingTokenDecoder(context);
    var batch = new LLamaBatch();
    for (int i = 0; i < tokens.Length; i++) batch.Add(tokens[i], i, LLamaSeqId.Zero, i == tokens.Length - 1);
    var sw = Stopwatch.StartNew();
    int generated = 0, position = tokens.Length;
    while (generated < 96)
    {
        if (context.NativeHandle.Decode(batch) != DecodeResult.Ok) throw new InvalidOperationException("llama_decode failed");
        var logits = context.NativeHandle.GetLogitsIth(batch.TokenCount - 1);
        int best = 0;
        for (int v = 1; v < logits.Length; v++) if (logits[v] > logits[best]) best = v;
        var token = (LLamaToken)best;
        if (token == vocab.EOS) break;
        decoder.Add(token);
        generated++;
        batch.Clear();
        batch.Add(token, position++, LLamaSeqId.Zero, true);
    }
    double seconds = sw.Elapsed.TotalSeconds;
    Console.WriteLine(prompt + decoder.Read());
    Console.Error.WriteLine($"{generated} tokens in {seconds:F2} s ({generated / seconds:F0} tokens/s) from {path}");
    return 0;
}
catch (DotQuantException e)
{
    Console.Error.WriteLine(e.Format());
    return 1;
}
