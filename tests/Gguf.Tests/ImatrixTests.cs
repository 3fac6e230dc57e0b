using DotQuant.Engine.Calibration;
using DotQuant.Engine.Gguf;
using DotQuant.Engine.Gguf.Blocks;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.Imatrix;
using DotQuant.Engine.Manifest;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;
using DotQuant.Tests;
using Xunit.Abstractions;

namespace DotQuant.Gguf.Tests;

/// <summary>llama.cpp's importance matrix (spec §7) against llama.cpp's own tools: our collector against
/// llama-imatrix on the same chunks, and round-to-nearest with an imatrix against llama-quantize --imatrix,
/// byte for byte on every tensor.</summary>
public class ImatrixTests(ITestOutputHelper output)
{
    static string LlamaTiny => Path.Combine(SharedPaths.Root, "models", "llama-tiny");
    const int Context = 256, Chunks = 12;

    /// <summary>120 KB of WikiText-2 valid (tokenized text, with literal &lt;unk&gt;: llama-imatrix reads
    /// special tokens as text, and so must we) for both collectors.</summary>
    static string CalibrationText(TempDir dir)
    {
        string path = dir.File("calib.txt");
        var text = File.ReadAllText(SharedPaths.Data("wikitext2-tokenized", "valid.tokens"));
        File.WriteAllText(path, text[..120_000]);
        return path;
    }

    static ImportanceMatrix Ours(string text, int chunks = Chunks)
    {
        using var model = ModelLoader.Open(LlamaTiny);
        var tokenizer = HfTokenizer.Load(LlamaTiny);
        var ids = tokenizer.Encode(File.ReadAllText(text), addBos: true, parseSpecial: false);
        var windows = ImatrixCollector.Chunks(ids, Context, chunks, tokenizer.BosTokenId);
        return ImatrixCollector.Collect(model, windows, Context, [text]);
    }

    static string LlamaImatrix(TempDir dir, string text, string f32)
    {
        string path = dir.File("llama-imatrix.gguf");
        LlamaCppTools.Run("llama-imatrix", ["-m", f32, "-f", text, "-c", $"{Context}", "--chunks", $"{Chunks}", "-o", path, "--no-ppl", "-t", "2"]);
        return path;
    }

    [Fact]
    public void Our_importance_matrix_is_llama_imatrix_s_on_the_same_chunks()
    {
        using var dir = new TempDir();
        string text = CalibrationText(dir), f32 = dir.File("f32.gguf");
        GgufFloatExport.Write(LlamaTiny, f32, GgmlType.F32);
        var theirs = ImportanceMatrix.Load(LlamaImatrix(dir, text, f32));
        var ours = Ours(text);
        ours.Write(dir.File("ours.gguf"));
        var read = ImportanceMatrix.Load(dir.File("ours.gguf"));

        Assert.Equal(theirs.Entries.Keys, read.Entries.Keys);
        Assert.Equal(theirs.ChunkCount, read.ChunkCount);
        Assert.Equal(theirs.ChunkSize, read.ChunkSize);
        double worst = 0;
        string worstName = "";
        foreach (var (name, t) in theirs.Entries)
        {
            var o = read.Entries[name];
            Assert.Equal(t.Counts, o.Counts);
            Assert.Equal(t.Sums.Length, o.Sums.Length);
            for (int j = 0; j < t.Sums.Length; j++)
            {
                double rel = Math.Abs(o.Sums[j] - t.Sums[j]) / Math.Max(t.Sums[j], 1e-30);
                if (rel > worst) { worst = rel; worstName = $"{name}[{j}]"; }
            }
        }
        output.WriteLine($"{theirs.Entries.Count} entries, counts {theirs.Entries.First().Value.Counts[0]}; largest relative difference of a sum {worst:E2} ({worstName})");
        // llama.cpp sums x² in fp32 over 3072 rows and its forward differs from ours at fp32 rounding.
        Assert.True(worst < 2e-3, $"a sum differs by {worst:E2} relative ({worstName})");

        // llama-quantize takes ours as it takes its own.
        LlamaCppTools.Run("llama-quantize", ["--imatrix", dir.File("ours.gguf"), f32, dir.File("q.gguf"), "Q4_K_M", "2"]);
        using var q = GgufFile.Open(dir.File("q.gguf"));
        Assert.Contains(q.Tensors, t => t.Type == GgmlType.Q4_K);
    }

    [Fact]
    public void The_legacy_format_round_trips_to_the_same_importance()
    {
        using var dir = new TempDir();
        string text = CalibrationText(dir);
        var ours = Ours(text, chunks: 3);
        ours.Write(dir.File("m.gguf"));
        ours.Write(dir.File("m.dat"));
        var gguf = ImportanceMatrix.Load(dir.File("m.gguf"));
        var dat = ImportanceMatrix.Load(dir.File("m.dat"));
        Assert.True(dat.Legacy);
        Assert.Equal(3, dat.ChunkCount);
        foreach (var name in gguf.Entries.Keys)
        {
            var a = gguf.Importance(name)!;
            var b = dat.Importance(name)!;
            for (int j = 0; j < a.Length; j++) Assert.True(Math.Abs(a[j] - b[j]) <= 1e-6 * a[j], $"{name}[{j}]: {a[j]} vs {b[j]}");
        }
    }

    /// <summary>llama-quantize --imatrix with llama-imatrix's file, against `run` with method rtn and
    /// hessian: imatrix on the same file: every tensor's bytes.</summary>
    [Theory]
    [InlineData("q4_0", "Q4_0")]
    [InlineData("q4_1", "Q4_1")]
    [InlineData("q5_0", "Q5_0")]
    [InlineData("q2_k", "Q2_K")]
    [InlineData("q3_k_m", "Q3_K_M")]
    [InlineData("q4_k_m", "Q4_K_M")]
    [InlineData("q5_k_m", "Q5_K_M")]
    public void Round_to_nearest_with_an_imatrix_writes_llama_quantize_s_bytes(string type, string llamaType)
    {
        using var dir = new TempDir();
        string text = CalibrationText(dir), f32 = dir.File("f32.gguf");
        GgufFloatExport.Write(LlamaTiny, f32, GgmlType.F32);
        string imatrix = LlamaImatrix(dir, text, f32);
        LlamaCppTools.Run("llama-quantize", ["--imatrix", imatrix, f32, dir.File("llama.gguf"), llamaType, "2"]);

        File.WriteAllText(dir.File("quant.yaml"),
            $"version: 1\nmodel: {LlamaTiny}\nquantize:\n  method: rtn\n  hessian: imatrix\n  imatrix: {imatrix}\n" +
            $"output:\n  name: out\n  format: gguf\n  gguf: {{ type: {type} }}\n");
        var result = QuantizeJob.Run(ManifestParser.Load(dir.File("quant.yaml")), dir.File("runs"));
        using var ours = GgufFile.Open(Path.Combine(result.Output, $"out-{type}.gguf"));
        using var theirs = GgufFile.Open(dir.File("llama.gguf"));
        var types = new SortedSet<string>();
        int compared = 0;
        foreach (var t in theirs.Tensors)
        {
            var o = ours.Tensor(t.Name);
            Assert.True(o is not null, $"{t.Name} missing from our file");
            Assert.True(o!.Type == t.Type, $"{t.Name}: ours {o.Type}, llama-quantize {t.Type}");
            var a = ours.ReadAll(o);
            var b = theirs.ReadAll(t);
            int first = a.AsSpan().CommonPrefixLength(b);
            Assert.True(first == b.Length, $"{t.Name} ({t.Type}): first differing byte at {first} of {b.Length}");
            if (BlockCodec.TryGet(t.Type, out var codec) && codec.UsesImportance && t.Name.StartsWith("blk.", StringComparison.Ordinal)) types.Add(t.Type.ToString());
            compared++;
        }
        output.WriteLine($"{type}: {compared} tensors equal; importance-weighted types {string.Join(", ", types)}");
        Assert.NotEmpty(types);
    }

    /// <summary>Spec §9.6.3: scaling every imp_j by one constant leaves the codes unchanged (the weighted
    /// searches compare ratios of weighted sums).</summary>
    [Theory]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q4_1)]
    [InlineData(GgmlType.Q5_0)]
    [InlineData(GgmlType.Q5_1)]
    [InlineData(GgmlType.Q2_K)]
    [InlineData(GgmlType.Q3_K)]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.Q5_K)]
    [InlineData(GgmlType.Q6_K)]
    public void Scaling_the_importance_by_a_constant_leaves_the_codes(GgmlType type)
    {
        var rng = new Random(7);
        const int n = 512, rows = 16;
        var w = Enumerable.Range(0, n * rows).Select(_ => (float)(rng.NextDouble() * 2 - 1) * (rng.Next(20) == 0 ? 4f : 1f)).ToArray();
        var imp = Enumerable.Range(0, n).Select(_ => (float)Math.Exp(rng.NextDouble() * 6 - 3)).ToArray();
        var codec = BlockCodec.For(type);
        var reference = codec.QuantizeRows(w, n, imp);
        Assert.Equal(reference, codec.QuantizeRows(w, n, imp.Select(v => v * 4f).ToArray()));
        Assert.Equal(reference, codec.QuantizeRows(w, n, imp.Select(v => v / 1024f).ToArray()));
        // And the importance changes them: an all-ones importance is not the unweighted reference.
        Assert.NotEqual(reference, codec.QuantizeRows(w, n));
    }

    /// <summary>Spec §9.6.3: imp_j is diag(XXᵀ)/T of the same tokens, computed apart (the captured input of
    /// block 0's q_proj and down_proj, its Gram matrix's diagonal in fp64).</summary>
    [Fact]
    public void The_importance_is_the_diagonal_of_the_inputs_Gram_matrix_over_the_tokens()
    {
        using var dir = new TempDir();
        string text = CalibrationText(dir);
        var matrix = Ours(text, chunks: 4);
        using var model = ModelLoader.Open(LlamaTiny);
        var tokenizer = HfTokenizer.Load(LlamaTiny);
        var windows = ImatrixCollector.Chunks(tokenizer.Encode(File.ReadAllText(text), addBos: true, parseSpecial: false), Context, 4, tokenizer.BosTokenId);
        using var ids = TorchSharp.torch.tensor(windows.SelectMany(x => x).ToArray(), [windows.Count, Context]);
        using var x = model.Embed(ids);
        using var ctx = model.CreateContext(0, Context);
        using var lease = model.Block(0);
        foreach (var (linear, name) in new[] { ("model.layers.0.self_attn.q_proj", "blk.0.attn_q.weight"), ("model.layers.0.mlp.down_proj", "blk.0.ffn_down.weight") })
        {
            var target = lease.Block.Linears.Single(l => l.Name == linear);
            using var input = InputCapture.Of(lease.Block, target, x, ctx);
            using var X = input.reshape(-1, input.shape[^1]).to(TorchSharp.torch.ScalarType.Float64);
            using var gram = X.t().matmul(X);
            var diag = gram.diagonal().data<double>().ToArray();
            double tokens = X.shape[0];
            var imp = matrix.Importance(name)!;
            for (int j = 0; j < imp.Length; j++)
                Assert.True(Math.Abs(imp[j] - diag[j] / tokens) <= 1e-6 * (diag[j] / tokens) + 1e-12, $"{name}[{j}]: {imp[j]} vs {diag[j] / tokens}");
        }
    }

    [Fact]
    public void A_hostile_or_foreign_importance_file_is_refused_with_DQ0118()
    {
        using var dir = new TempDir();
        string text = CalibrationText(dir);
        var good = Ours(text, chunks: 2);
        good.Write(dir.File("good.gguf"));
        good.Write(dir.File("good.dat"));
        var bytes = File.ReadAllBytes(dir.File("good.gguf"));
        File.WriteAllBytes(dir.File("truncated.gguf"), bytes[..(bytes.Length / 2)]);
        var dat = File.ReadAllBytes(dir.File("good.dat"));
        File.WriteAllBytes(dir.File("truncated.dat"), dat[..(dat.Length / 3)]);
        var huge = (byte[])dat.Clone();
        BitConverter.GetBytes(int.MaxValue).CopyTo(huge, 4);     // the first name's length
        File.WriteAllBytes(dir.File("huge.dat"), huge);
        File.WriteAllBytes(dir.File("empty.dat"), []);
        GgufFloatExport.Write(LlamaTiny, dir.File("model.gguf"), GgmlType.F32);
        // Sums without their counts, and a negative sum.
        var first = good.Entries.First();
        new ImportanceMatrix(new Dictionary<string, ImportanceMatrix.Entry> { [first.Key] = first.Value with { Sums = first.Value.Sums.Select(v => -v).ToArray() } },
            2, Context, ["x"]).Write(dir.File("negative.gguf"));
        foreach (var name in new[] { "truncated.gguf", "truncated.dat", "huge.dat", "empty.dat", "model.gguf", "negative.gguf" })
        {
            var e = Assert.Throws<DotQuant.Runtime.DotQuantException>(() => ImportanceMatrix.Load(dir.File(name)));
            Assert.True(e.Code is "DQ0118" or "DQ0112" or "DQ0113", $"{name}: {e.Code} {e.Message}");
            output.WriteLine($"{name}: {e.Code} {e.Message}");
        }
    }

    [Fact]
    public void An_imatrix_of_another_model_is_refused_with_DQ0119()
    {
        using var dir = new TempDir();
        var good = Ours(CalibrationText(dir), chunks: 2);
        var entries = good.Entries.ToDictionary(kv => kv.Key, kv => kv.Key == "blk.0.ffn_down.weight" ? kv.Value with { Sums = kv.Value.Sums[..256] } : kv.Value);
        new ImportanceMatrix(entries, 2, Context, ["x"]).Write(dir.File("other.gguf"));
        File.WriteAllText(dir.File("quant.yaml"),
            $"version: 1\nmodel: {LlamaTiny}\nquantize:\n  method: rtn\n  hessian: imatrix\n  imatrix: other.gguf\n" +
            "output:\n  name: out\n  format: gguf\n  gguf: { type: q4_k_m }\n");
        var e = Assert.Throws<DotQuant.Runtime.DotQuantException>(() => QuantizeJob.Run(ManifestParser.Load(dir.File("quant.yaml")), dir.File("runs")));
        Assert.Equal("DQ0119", e.Code);
        Assert.False(Directory.Exists(Path.Combine(dir.File("runs"), "out")), "a refused run must not publish an output");
    }

    /// <summary>llama.cpp tokenizes special tokens written in a text as text (parse_special = false), and so
    /// does our tokenizer when asked: WikiText's literal &lt;unk&gt; must not become the unknown token's id.</summary>
    [Fact]
    public void Special_tokens_written_in_the_text_tokenize_as_llama_cpp_does()
    {
        using var dir = new TempDir();
        GgufFloatExport.Write(LlamaTiny, dir.File("f32.gguf"), GgmlType.F32);
        string text = File.ReadAllText(CalibrationText(dir))[..20_000];
        Assert.Contains("<unk>", text);
        var tokenizer = HfTokenizer.Load(LlamaTiny);
        using var weights = LlamaCpp.Load(dir.File("f32.gguf"), out _);
        var theirs = weights.Tokenize(text, true, false, System.Text.Encoding.UTF8).Select(t => (int)t).ToArray();
        Assert.Equal(theirs, tokenizer.Encode(text, addBos: true, parseSpecial: false));
        Assert.NotEqual(theirs, tokenizer.Encode(text, addBos: true));
    }
}
