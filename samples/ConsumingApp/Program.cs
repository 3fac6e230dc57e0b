using System.Diagnostics;
using DotQuant.Engine.Diagnostics;
using DotQuant.Engine.Models;
using DotQuant.Engine.Runtime;
using DotQuant.Engine.Tokenization;

// Usage: ConsumingApp [PROMPT] [--model DIR]
// By default it runs the model the build quantized (quant.yaml's output.name), from the files
// beside the app or from the assembly's resources when quant.yaml says embed: true.
string prompt = args.Length > 0 && !args[0].StartsWith("--") ? args[0] : "Once upon a time";
int at = Array.IndexOf(args, "--model");
try
{
    string modelDir = at >= 0 && at + 1 < args.Length ? args[at + 1] : ModelLocator.Find("stories260K-w4");
    var tokenizer = HfTokenizer.Load(modelDir);
    using var model = ModelLoader.Load(modelDir);
    var promptIds = new List<int>();
    if (tokenizer.BosTokenId is int bos) promptIds.Add(bos);
    promptIds.AddRange(tokenizer.Encode(prompt));
    var sw = Stopwatch.StartNew();
    var output = TextGenerator.Greedy(model, promptIds, 96, tokenizer.EosTokenId);
    double seconds = sw.Elapsed.TotalSeconds;
    Console.WriteLine(prompt + tokenizer.Decode(output));
    Console.Error.WriteLine($"{output.Length} tokens in {seconds:F2} s ({output.Length / seconds:F0} tokens/s) from {modelDir}");
    return 0;
}
catch (DotQuantException e)
{
    Console.Error.WriteLine(e.Format());
    return 1;
}
