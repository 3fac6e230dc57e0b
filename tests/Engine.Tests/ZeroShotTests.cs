using DotQuant.Runtime;
using DotQuant.Engine.Evaluation;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;
using DotQuant.Tests;
using Xunit;
using static TorchSharp.torch;

namespace DotQuant.Engine.Tests;

public class ZeroShotTests
{
    /// <summary>stories260K's config and tokenizer with every weight 0 and norms 1: every logit is 0,
    /// so each token has log-probability −ln 512 and a continuation of n tokens scores −n·ln 512.</summary>
    static TempDir UniformModel()
    {
        var dir = Fixtures.CopyOfStories();
        using var src = Checkpoint.Open(SharedPaths.Stories260K);
        var tensors = src.Tensors.ToDictionary(t => t.Name, t => t.Name.EndsWith("norm.weight", StringComparison.Ordinal) ? ones(t.Shape) : zeros(t.Shape));
        File.Delete(dir.File("model.safetensors"));
        SafeTensorsWriter.Write(dir.File("model.safetensors"), tensors, new Dictionary<string, string>());
        foreach (var t in tensors.Values) t.Dispose();
        return dir;
    }

    static string Task(TempDir dir, string name, params string[] lines)
    {
        string path = dir.File(name);
        File.WriteAllLines(path, lines);
        return path;
    }

    [Fact]
    public void Acc_and_acc_norm_match_hand_computed_log_likelihoods_on_a_uniform_model()
    {
        using var dir = UniformModel();
        var tok = HfTokenizer.Load(dir.Path);
        using var model = ModelLoader.Load(dir.Path);
        string path = Task(dir, "mc.jsonl",
            """{"query": "Once upon a time", "choices": ["there was a big dog who liked to play", "a cat"], "gold": 1}""",
            """{"query": "The sun", "choices": ["is hot and bright today in the sky", "x"], "gold": 0}""",
            """{"query": "She said", "choices": ["yes", "no thank you very much"], "gold": 1}""");
        var task = ZeroShotTask.Load(path, null);
        double lnV = Math.Log(512);
        int Tokens(string ctx, string choice) => tok.Encode(ctx + " " + choice).Length - tok.Encode(ctx).Length;
        int accHits = 0, normHits = 0;
        var ll = ZeroShot.LogLikelihoods(model, tok, task);
        for (int d = 0; d < task.Documents.Count; d++)
        {
            var doc = task.Documents[d];
            var expected = doc.Choices.Select(c => -Tokens(doc.Contexts[0], c) * lnV).ToArray();
            for (int i = 0; i < expected.Length; i++) Assert.Equal(expected[i], ll[d][i].LogLikelihood, 3);
            if (ZeroShot.ArgMax(expected) == doc.Gold) accHits++;
            if (ZeroShot.ArgMax(expected.Select((v, i) => v / doc.Choices[i].Length).ToArray()) == doc.Gold) normHits++;
        }
        var r = ZeroShot.Evaluate(model, tok, task);
        Assert.Equal(accHits / 3.0, r.Acc, 12);
        Assert.Equal(normHits / 3.0, r.AccNorm!.Value, 12);
        // Under a uniform model the choice with fewer tokens wins acc: only doc 0's gold is the shorter one.
        Assert.Equal(1 / 3.0, r.Acc, 12);
        Assert.NotEqual(r.Acc, r.AccNorm!.Value);
        double p = r.Acc;
        Assert.Equal(Math.Sqrt(p * (1 - p) * 3 / 2 / 3), r.AccStderr, 12);   // sample sd / √n
    }

    [Fact]
    public void Batched_scores_equal_a_naive_one_request_at_a_time_loop_on_stories260K()
    {
        var tok = HfTokenizer.Load(SharedPaths.Stories260K);
        using var model = ModelLoader.Load(SharedPaths.Stories260K);
        using var dir = new TempDir();
        string mc = Task(dir, "copa5.jsonl", File.ReadLines(SharedPaths.Data("zeroshot", "copa.jsonl")).Take(5).ToArray());
        string wino = Task(dir, "wino5.jsonl", File.ReadLines(SharedPaths.Data("zeroshot", "winogrande.jsonl")).Take(5).ToArray());
        string lm = Task(dir, "lambada5.jsonl", File.ReadLines(SharedPaths.Data("zeroshot", "lambada_openai.jsonl")).Take(5).ToArray());
        foreach (var path in new[] { mc, wino, lm })
        {
            var task = ZeroShotTask.Load(path, null);
            var batched = ZeroShot.LogLikelihoods(model, tok, task);
            for (int d = 0; d < task.Documents.Count; d++)
            {
                var doc = task.Documents[d];
                for (int i = 0; i < batched[d].Length; i++)
                {
                    string ctx = doc.Contexts[Math.Min(i, doc.Contexts.Count - 1)], cont = doc.Continuations[Math.Min(i, doc.Continuations.Count - 1)];
                    var c = tok.Encode(ctx);
                    var whole = tok.Encode(ctx + cont);
                    var target = whole.Skip(c.Length).ToArray();
                    var input = whole[..^1];
                    if (input.Length > 512) input = input[^512..];
                    using var logits = model.Forward(tensor(input.Select(x => (long)x).ToArray(), [1, input.Length]))[0];
                    double sum = 0;
                    bool greedy = true;
                    for (int k = 0; k < target.Length; k++)
                    {
                        var row = logits[input.Length - target.Length + k];
                        sum += row.log_softmax(0)[target[k]].item<float>();
                        greedy &= row.argmax().item<long>() == target[k];
                    }
                    Assert.True(Math.Abs(sum - batched[d][i].LogLikelihood) < 1e-3, $"{task.Name} doc {d} option {i}: {sum} vs {batched[d][i].LogLikelihood}");
                    Assert.Equal(greedy, batched[d][i].Greedy);
                }
            }
        }
    }

    [Fact]
    public void Formats_are_recognised_and_bad_files_are_reported_with_their_line()
    {
        using var dir = new TempDir();
        var wino = ZeroShotTask.Load("winogrande", SharedPaths.Data("zeroshot"), limit: 7);
        Assert.Equal((TaskKind.PartialContext, 7), (wino.Kind, wino.Documents.Count));
        Assert.Equal(TaskKind.LanguageModel, ZeroShotTask.Load("lambada_openai", SharedPaths.Data("zeroshot"), 3).Kind);
        var hs = ZeroShotTask.Load(Task(dir, "hellaswag.txt", "A man is sitting on a roof. he", "3", "is using wrap.", "is ripping level tiles off.", "is holding a rubik's cube.", "starts pulling up roofing."), null);
        Assert.Equal((TaskKind.MultipleChoice, 3, 4), (hs.Kind, hs.Documents[0].Gold, hs.Documents[0].Choices.Count));
        Assert.Equal(" starts pulling up roofing.", hs.Documents[0].Continuations[3]);

        var bad = Assert.Throws<DotQuantException>(() => ZeroShotTask.Load(Task(dir, "bad.jsonl", """{"query": "q", "choices": ["a", "b"], "gold": 0}""", """{"query": "q", "choices": ["a", "b"], "gold": 5}"""), null));
        Assert.Equal((ErrorCodes.EvalData, 2), (bad.Code, bad.Line));
        Assert.Equal(ErrorCodes.EvalData, Assert.Throws<DotQuantException>(() => ZeroShotTask.Load(Task(dir, "hs.txt", "a", "9", "b", "c", "d", "e"), null)).Code);
        Assert.Equal(ErrorCodes.EvalData, Assert.Throws<DotQuantException>(() => ZeroShotTask.Load("no_such_task", dir.Path)).Code);
    }
}
