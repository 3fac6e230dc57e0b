using DotQuant.Engine.Diagnostics;
using DotQuant.Engine.Models;
using DotQuant.Engine.Runtime;
using DotQuant.Engine.Tokenization;

// Usage: ConsumingApp [MODEL_DIR] [PROMPT]
// Default model: ../shared/models/stories260K beside the repository (or $DOTQUANT_SHARED/models/stories260K).
string modelDir = args.Length > 0 ? args[0] : DefaultModel();
string prompt = args.Length > 1 ? args[1] : "";
try
{
    var tokenizer = HfTokenizer.Load(modelDir);
    using var model = ModelLoader.Load(modelDir);
    var promptIds = new List<int>();
    if (tokenizer.BosTokenId is int bos) promptIds.Add(bos);
    promptIds.AddRange(tokenizer.Encode(prompt));
    var output = TextGenerator.Greedy(model, promptIds, 64, tokenizer.EosTokenId);
    Console.WriteLine(prompt + tokenizer.Decode(output));
    return 0;
}
catch (DotQuantException e)
{
    Console.Error.WriteLine($"error {e.Code}: {e.Message}");
    return 1;
}

static string DefaultModel()
{
    string shared = Environment.GetEnvironmentVariable("DOTQUANT_SHARED") is { Length: > 0 } s
        ? s
        : Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "..", "..", "shared");
    return Path.GetFullPath(Path.Combine(shared, "models", "stories260K"));
}
