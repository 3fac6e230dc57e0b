using DotQuant.Engine.Gguf;
using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

/// <summary>`inspect` and `eval` take GGUF files.</summary>
public class GgufCommandTests
{
    static string LlamaTiny => Path.Combine(SharedPaths.Root, "models", "llama-tiny");

    [Fact]
    public void AGgufFileIsInspectedAndEvaluatedLikeItsCheckpoint()
    {
        using var dir = new TempDir();
        GgufFloatExport.Write(LlamaTiny, dir.File("llama-tiny-f16.gguf"), GgmlType.F16);
        File.Copy(Path.Combine(LlamaTiny, "tokenizer.json"), dir.File("tokenizer.json"));

        var inspect = CliRunner.Run("inspect", dir.File("llama-tiny-f16.gguf"), "--format", "json");
        Assert.True(inspect.ExitCode == 0, inspect.Stderr);
        var json = inspect.LastJson();
        Assert.Equal(4_984_064, json.GetProperty("parameters").GetInt64());
        var q = json.GetProperty("tensors").EnumerateArray().Single(t => t.GetProperty("name").GetString() == "blk.0.attn_q.weight");
        Assert.Equal("F16", q.GetProperty("type").GetString());
        Assert.Equal("llama", json.GetProperty("metadata").GetProperty("general.architecture").GetString());

        string data = SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt");
        var hf = CliRunner.Run("eval", LlamaTiny, "--data", data, "--sequence-length", "256", "--max-windows", "2", "--format", "json");
        var gguf = CliRunner.Run("eval", dir.Path, "--data", data, "--sequence-length", "256", "--max-windows", "2", "--format", "json");
        Assert.True(gguf.ExitCode == 0, gguf.Stderr);
        double a = hf.LastJson().GetProperty("perplexity").GetDouble(), b = gguf.LastJson().GetProperty("perplexity").GetDouble();
        // F16 weights: the same model to about three decimal digits.
        Assert.True(Math.Abs(b / a - 1) < 2e-3, $"checkpoint {a:F4}, F16 GGUF {b:F4}");
        Assert.NotEqual(a, b);
    }

    [Fact]
    public void ATruncatedGgufGetsACode()
    {
        using var dir = new TempDir();
        GgufFloatExport.Write(LlamaTiny, dir.File("m.gguf"), GgmlType.F32);
        var bytes = File.ReadAllBytes(dir.File("m.gguf"));
        File.WriteAllBytes(dir.File("m.gguf"), bytes[..(bytes.Length / 2)]);
        var r = CliRunner.Run("inspect", dir.File("m.gguf"));
        Assert.Equal(1, r.ExitCode);
        Assert.True(r.Stderr.Contains("DQ0112"), r.Stderr);
    }

    /// <summary>`run` with format gguf: the folder holds name-type.gguf (with the mix's types), the report
    /// and the tokenizer, and `inspect` and `eval` take the folder.</summary>
    [Fact]
    public void RunWritesAGgufThatInspectAndEvalRead()
    {
        using var dir = new TempDir();
        string data = SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt");
        File.WriteAllText(dir.File("quant.yaml"),
            $"version: 1\nmodel: {LlamaTiny}\nquantize: {{ method: rtn, layers: [ {{ match: model.layers.3.self_attn.q_proj, type: q8_0 }} ] }}\noutput: {{ name: tiny, format: gguf, gguf: {{ type: q4_k_m }} }}\n" +
            $"evaluate: {{ perplexity: {{ data: {data}, sequence_length: 256, max_sequences: 2 }} }}\n");
        var run = CliRunner.Run("run", dir.File("quant.yaml"), "--format", "json");
        Assert.True(run.ExitCode == 0, run.Stdout + run.Stderr);
        Assert.True(File.Exists(dir.File("tiny/tiny-q4_k_m.gguf")));
        Assert.True(File.Exists(dir.File("tiny/dotquant.json")));

        var inspect = CliRunner.Run("inspect", dir.File("tiny"), "--format", "json");
        Assert.True(inspect.ExitCode == 0, inspect.Stderr);
        var json = inspect.LastJson();
        Assert.Equal("15", json.GetProperty("metadata").GetProperty("general.file_type").ToString());   // MOSTLY_Q4_K_M
        string Type(string name) => json.GetProperty("tensors").EnumerateArray().Single(t => t.GetProperty("name").GetString() == name).GetProperty("type").GetString()!;
        Assert.Equal("Q4_K", Type("blk.1.attn_q.weight"));
        // use_more_bits(i, 6): i < 0, i >= 5 or (i − 0) % 3 == 2 → layers 2 and 5.
        Assert.Equal("Q4_K", Type("blk.0.ffn_down.weight"));
        Assert.Equal("Q6_K", Type("blk.2.ffn_down.weight"));
        Assert.Equal("Q6_K", Type("blk.5.attn_v.weight"));
        Assert.Equal("Q6_K", Type("output.weight"));
        Assert.Equal("Q8_0", Type("blk.3.attn_q.weight"));     // the layers rule

        var eval = CliRunner.Run("eval", dir.File("tiny"), "--data", data, "--sequence-length", "256", "--max-windows", "2", "--format", "json");
        Assert.True(eval.ExitCode == 0, eval.Stderr);
        Assert.Equal(run.LastJson().GetProperty("perplexity").GetProperty("after").GetDouble(), eval.LastJson().GetProperty("perplexity").GetDouble(), 9);
    }

    [Theory]
    [InlineData("quantize: { method: gptq, bits: 3 }\noutput: { format: gguf }\n", "bits has no effect")]
    [InlineData("quantize: { method: gptq, act_order: true }\noutput: { format: gguf }\n", "static_groups")]
    [InlineData("quantize: { method: rtn }\noutput: { format: gguf, gguf: { type: f16 } }\n", "method: none")]
    [InlineData("quantize: { method: none }\noutput: { format: dotquant }\n", "format: gguf")]
    [InlineData("quantize: { method: rtn }\noutput: { format: gguf, gguf: { type: q4_k_xl } }\n", "not a GGUF type")]
    public void WhatAGgufCannotHoldIsRefusedWithTheManifestLine(string rest, string message)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("quant.yaml"), $"version: 1\nmodel: {LlamaTiny}\ncalibration: {{ data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")} }}\n{rest}");
        var r = CliRunner.Run("run", dir.File("quant.yaml"));
        Assert.Equal(1, r.ExitCode);
        Assert.Matches(@"quant\.yaml\(\d+,\d+\): error DQ00\d\d", r.Stderr);
        Assert.Contains(message, r.Stderr);
    }
}
