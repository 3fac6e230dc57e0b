using System.Diagnostics;
using DotQuant.Runtime;
using Microsoft.ML.OnnxRuntimeGenAI;

// Usage: OnnxApp [PROMPT] [--model FOLDER]
// By default it runs the ONNX GenAI folder the build quantized (quant.yaml's output.name), from the
// files beside the app or from the assembly's resources when quant.yaml says embed: true.
string prompt = args.Length > 0 && !args[0].StartsWith("--") ? args[0] : "Once upon a time";
int at = Array.IndexOf(args, "--model");
try
{
    string folder = at >= 0 && at + 1 < args.Length ? args[at + 1] : ModelLocator.FindOnnx("stories260K");
    using var model = new Model(folder);
    using var tokenizer = new Tokenizer(model);

    // Greedy decoding (genai_config.json's search defaults): BOS + the prompt, then the most likely
    // token, one at a time, until EOS or 96 new tokens.
    using var sequences = tokenizer.Encode(prompt);
    int[] tokens = [tokenizer.GetBosTokenId(), .. sequences[0]];
    using var parameters = new GeneratorParams(model);
    parameters.SetSearchOption("max_length", tokens.Length + 96);
    using var generator = new Generator(model, parameters);
    var sw = Stopwatch.StartNew();
    generator.AppendTokens(tokens);
    while (!generator.IsDone()) generator.GenerateNextToken();
    double seconds = sw.Elapsed.TotalSeconds;
    var output = generator.GetSequence(0).ToArray();
    int generated = output.Length - tokens.Length;
    Console.WriteLine(prompt + tokenizer.Decode(output[tokens.Length..]));
    Console.Error.WriteLine($"{generated} tokens in {seconds:F2} s ({generated / seconds:F0} tokens/s) from {folder}");
    return 0;
}
catch (DotQuantException e)
{
    Console.Error.WriteLine(e.Format());
    return 1;
}
