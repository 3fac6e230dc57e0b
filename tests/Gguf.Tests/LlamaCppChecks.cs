using System.Text;
using DotQuant.Engine.Gguf;
using DotQuant.Engine.IO;
using DotQuant.Engine.Gguf.Blocks;
using DotQuant.Engine.Gguf.Grids;
using DotQuant.Engine.Quantizers;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;
using DotQuant.Tests;
using LLama.Native;
using static TorchSharp.torch;

namespace DotQuant.Gguf.Tests;

/// <summary>Our GGUF files and block formats against llama.cpp: its quantizer, its loader, its tokenizer
/// and its forward pass.</summary>
public class LlamaCppChecks
{
    static string LlamaTiny => Path.Combine(SharedPaths.Root, "models", "llama-tiny");

    /// <summary>llama.cpp's reference quantizers are deterministic (no importance matrix): our codecs
    /// must produce its bytes for every tensor it stores in that type.</summary>
    [Theory]
    [InlineData(LLamaFtype.MOSTLY_Q4_0, GgmlType.Q4_0)]
    [InlineData(LLamaFtype.MOSTLY_Q4_1, GgmlType.Q4_1)]
    [InlineData(LLamaFtype.MOSTLY_Q5_0, GgmlType.Q5_0)]
    [InlineData(LLamaFtype.MOSTLY_Q5_1, GgmlType.Q5_1)]
    [InlineData(LLamaFtype.MOSTLY_Q8_0, GgmlType.Q8_0)]
    [InlineData(LLamaFtype.MOSTLY_F16, GgmlType.F16)]
    public void RoundToNearestGivesLlamaCppsQuantizerBytes(LLamaFtype ftype, GgmlType type)
    {
        using var dir = new TempDir();
        GgufFloatExport.Write(LlamaTiny, dir.File("f32.gguf"), GgmlType.F32);
        LlamaCpp.Quantize(dir.File("f32.gguf"), dir.File("q.gguf"), ftype);

        using var f32 = GgufFile.Open(dir.File("f32.gguf"));
        using var q = GgufFile.Open(dir.File("q.gguf"));
        var codec = BlockCodec.For(type);
        int compared = 0;
        foreach (var t in q.Tensors.Where(t => t.Type == type))
        {
            var floats = f32.Decode(f32.Tensor(t.Name)!);
            var ours = codec.QuantizeRows(floats, (int)t.RowLength);
            var theirs = q.ReadAll(t);
            int first = ours.AsSpan().CommonPrefixLength(theirs);
            Assert.True(first == theirs.Length, $"{t.Name} ({type}): first differing byte at {first} of {theirs.Length}");
            if (type is not GgmlType.F16)
            {
                // The solvers' grid: round-to-nearest on it is llama.cpp's quantizer too.
                using var w = from_array(floats).reshape(t.Rows, t.RowLength);
                using var solved = (GgufLinear)RtnSolver.Solve(w, new SolverOptions { Kind = SolverKind.Rtn, GgufType = type, GroupSize = 32 });
                var grid = solved.EncodeRows(0, t.Rows);
                first = grid.AsSpan().CommonPrefixLength(theirs);
                Assert.True(first == theirs.Length, $"{t.Name} ({type}) on the solver's grid: first differing byte at {first} of {theirs.Length}");
            }
            compared++;
        }
        // Every block matrix of llama-tiny is stored in the requested type (rows of 256 and 768).
        Assert.True(compared >= 6 * 7, $"only {compared} tensors were stored as {type}");
    }

    /// <summary>The k-quants' reference quantizers (scale searches included) are deterministic too: every
    /// k-quant tensor of llama.cpp's named mixes, byte for byte, from our codecs and on the solvers' grid.</summary>
    [Theory]
    [InlineData(LLamaFtype.MOSTLY_Q2_K)]
    [InlineData(LLamaFtype.MOSTLY_Q3_K_M)]
    [InlineData(LLamaFtype.MOSTLY_Q4_K_M)]
    [InlineData(LLamaFtype.MOSTLY_Q5_K_M)]
    [InlineData(LLamaFtype.MOSTLY_Q6_K)]
    public void KQuantRoundToNearestGivesLlamaCppsQuantizerBytes(LLamaFtype ftype)
    {
        using var dir = new TempDir();
        GgufFloatExport.Write(LlamaTiny, dir.File("f32.gguf"), GgmlType.F32);
        LlamaCpp.Quantize(dir.File("f32.gguf"), dir.File("q.gguf"), ftype);

        using var f32 = GgufFile.Open(dir.File("f32.gguf"));
        using var q = GgufFile.Open(dir.File("q.gguf"));
        var types = new HashSet<GgmlType>();
        foreach (var t in q.Tensors.Where(t => t.Type is GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K))
        {
            var floats = f32.Decode(f32.Tensor(t.Name)!);
            var ours = BlockCodec.For(t.Type).QuantizeRows(floats, (int)t.RowLength);
            var theirs = q.ReadAll(t);
            int first = ours.AsSpan().CommonPrefixLength(theirs);
            Assert.True(first == theirs.Length, $"{t.Name} ({t.Type}): first differing byte at {first} of {theirs.Length}");
            using var w = from_array(floats).reshape(t.Rows, t.RowLength);
            using var solved = (GgufRowsLinear)RtnSolver.Solve(w, new SolverOptions { Kind = SolverKind.Rtn, GgufType = t.Type, GroupSize = 256 });
            var grid = solved.EncodeRows(0, t.Rows);
            first = grid.AsSpan().CommonPrefixLength(theirs);
            Assert.True(first == theirs.Length, $"{t.Name} ({t.Type}) on the solver's grid: first differing byte at {first} of {theirs.Length}");
            types.Add(t.Type);
        }
        Assert.NotEmpty(types);
    }

    /// <summary>llama-tiny: untied head, GQA, vocabulary scored from merge ranks (no tokenizer.model);
    /// stories260K: tied head, vocabulary from its SentencePiece tokenizer.model.</summary>
    [Theory]
    [InlineData("llama-tiny")]
    [InlineData("stories260K")]
    public void LlamaCppRunsOurFloatFileWithOurTokensAndLogits(string name)
    {
        string folder = Path.Combine(SharedPaths.Root, "models", name);
        using var dir = new TempDir();
        GgufFloatExport.Write(folder, dir.File("f32.gguf"), GgmlType.F32);
        string text = File.ReadAllText(SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt"))[..3000];
        SameTokensAndLogits(folder, dir.File("f32.gguf"), text, addBos: true);
    }

    /// <summary>A byte-level BPE vocabulary ("gpt2" with merges and Qwen2's pre-tokenizer) on a Qwen2
    /// model (q/k/v biases, no q/k permutation): llama.cpp tokenizes as we do and computes our logits.</summary>
    [Fact]
    public void LlamaCppRunsAByteLevelQwen2FileWithOurTokensAndLogits()
    {
        using var dir = new TempDir();
        string sample = File.ReadAllText(SharedPaths.Data("tinystories", "stories-sample.txt"));
        SyntheticModel.Write(dir.File("qwen2"), new SyntheticModel.Spec
        {
            ModelType = "qwen2", HiddenSize = 64, IntermediateSize = 128, Layers = 2, Heads = 4, KvHeads = 2, VocabSize = 384,
            TieWordEmbeddings = false, TokenizerText = sample,
        });
        GgufFloatExport.Write(dir.File("qwen2"), dir.File("f32.gguf"), GgmlType.F32);
        using (var f = GgufFile.Open(dir.File("f32.gguf")))
        {
            Assert.Equal("gpt2", f["tokenizer.ggml.model"]!.Value);
            Assert.Equal("qwen2", f["tokenizer.ggml.pre"]!.Value);
        }
        SameTokensAndLogits(dir.File("qwen2"), dir.File("f32.gguf"), "Once upon a time, Lily's dog ran 123 miles!\n\n  Then   it slept.", addBos: false);
    }

    /// <summary>Each family beyond the Llama layout, as a synthetic checkpoint with a byte-level vocabulary:
    /// llama.cpp's graph for that architecture computes our logits from our F32 file.</summary>
    /// <summary>The tolerance is 1e-3 of the logit range, except Gemma 3: llama.cpp's CPU GeLU reads a table
    /// indexed by the input rounded to fp16 and returns fp16 (GGML_GELU_FP16), about 5e-4 relative per
    /// activation; over this six-layer model that reaches 1.7e-3 (rounding our GeLU's input and output to
    /// fp16 brings it under 1e-3, measured). Perplexity of the same file must agree within 0.1% for every family.</summary>
    [Theory]
    [InlineData("qwen3", 1e-3)]
    [InlineData("phi3", 1e-3)]
    [InlineData("gemma2", 1e-3)]
    [InlineData("gemma3_text", 3e-3)]
    [InlineData("gpt2", 1e-3)]
    public void LlamaCppComputesOurLogitsForEachFamily(string family, double tolerance)
    {
        using var dir = new TempDir();
        string folder = dir.File(family);
        SyntheticModel.Write(folder, SyntheticFamilies.Spec(family, tokenizerText: SampleText));
        // Not named after the family: llama.cpp sets token attributes of "</s>" when general.name contains
        // "phi3" (real Phi-3 vocabularies have it), and this synthetic byte-level vocabulary does not.
        GgufFloatExport.Write(folder, dir.File("f32.gguf"), GgmlType.F32, name: "synthetic");
        using (var f = GgufFile.Open(dir.File("f32.gguf")))
            Assert.Equal(GgufArchitectures.Architecture(ModelConfig.Load(folder)), f["general.architecture"]!.Value);
        SameTokensAndLogits(folder, dir.File("f32.gguf"), "Once upon a time, Lily's dog ran 123 miles!\n\n  Then   it slept. " + SampleText[..1500], addBos: false, tolerance);

        var ids = HfTokenizer.Load(folder).Encode(File.ReadAllText(SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt"))[..20000]);
        using var model = ModelLoader.Open(dir.File("f32.gguf"));
        double ours = DotQuant.Engine.Evaluation.Perplexity.Windows(model, ids, 128, 8).Perplexity;
        double theirs = LlamaCpp.Perplexity(dir.File("f32.gguf"), ids, 128, 8);
        Assert.True(Math.Abs(ours / theirs - 1) < 1e-3, $"{family}: eval {ours:F4} vs llama.cpp {theirs:F4}");
    }

    static readonly string SampleText = File.ReadAllText(SharedPaths.Data("tinystories", "stories-sample.txt"));

    static void SameTokensAndLogits(string folder, string gguf, string text, bool addBos, double tolerance = 1e-3)
    {
        using var weights = LlamaCpp.Load(gguf, out var parameters);
        var tokenizer = HfTokenizer.Load(folder);
        var ours = tokenizer.Encode(text, addBos: addBos);
        var theirs = weights.Tokenize(text, addBos, false, Encoding.UTF8).Select(t => (int)t).ToArray();
        Assert.Equal(ours, theirs);

        var ids = ours.Take(128).ToArray();
        var llama = LlamaCpp.Logits(weights, parameters, ids);
        using var model = ModelLoader.Open(folder);
        using var input = tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Length]);
        using var logits = model.Forward(input);
        var perPosition = LlamaCpp.RelativeLogitDifferences(logits[0].data<float>().ToArray(), llama);
        double worst = perPosition.Max();
        int worstAt = Array.IndexOf(perPosition, worst);
        Assert.True(worst < tolerance, $"largest logit difference {worst:E2} of the range at position {worstAt}; by position: {string.Join(" ", perPosition.Select(x => x.ToString("E1")))}");
    }
}
