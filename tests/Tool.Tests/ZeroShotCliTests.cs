using System.Text.Json;
using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

/// <summary>`eval` with tasks and several models, and the report a `run` with evaluate: writes.</summary>
public class ZeroShotCliTests
{
    static readonly string Wiki = SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt");
    static readonly string Tasks = SharedPaths.Data("zeroshot");

    [Fact]
    public void Eval_of_two_models_prints_one_table_with_deltas_against_the_first()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("quant.yaml"),
            $"version: 1\nmodel: {SharedPaths.Stories260K}\nquantize:\n  method: rtn\n  bits: 2\n  group_size: 16\noutput:\n  name: rtn2\n");
        Assert.Equal(0, CliRunner.Run("run", dir.File("quant.yaml"), "--output", dir.Path, "-v", "q").ExitCode);
        string quantized = dir.File("rtn2");

        var r = CliRunner.Run("eval", SharedPaths.Stories260K, quantized, "--data", Wiki, "--sequence-length", "256", "--max-windows", "4",
            "--tasks", "copa,winogrande,lambada_openai", "--tasks-dir", Tasks, "--limit", "20", "--format", "json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var json = r.LastJson();
        Assert.Equal(2, json.GetProperty("models").GetArrayLength());
        var rows = json.GetProperty("rows").EnumerateArray().ToDictionary(x => x.GetProperty("metric").GetString()!);
        Assert.Contains("copa acc", rows.Keys);
        Assert.Contains("copa acc_norm", rows.Keys);
        Assert.Contains("winogrande acc", rows.Keys);
        Assert.DoesNotContain("winogrande acc_norm", rows.Keys);
        Assert.Contains("lambada_openai perplexity", rows.Keys);
        var ppl = rows["perplexity (wiki.test.gptq-joined.txt)"];
        double a = ppl.GetProperty("values")[0].GetDouble(), b = ppl.GetProperty("values")[1].GetDouble();
        Assert.True(b > a, "2-bit RTN must cost perplexity");
        Assert.Equal(b - a, ppl.GetProperty("delta")[1].GetDouble(), 9);
        Assert.Equal(0, ppl.GetProperty("delta")[0].GetDouble());
        var copa = rows["copa acc"];
        Assert.InRange(copa.GetProperty("values")[0].GetDouble(), 0, 1);
        Assert.True(copa.GetProperty("stderr")[0].GetDouble() > 0);

        var text = CliRunner.Run("eval", SharedPaths.Stories260K, quantized, "--tasks", "copa", "--tasks-dir", Tasks, "--limit", "10");
        Assert.True(text.ExitCode == 0, text.Stderr);
        Assert.Contains("| metric | stories260K | rtn2 (Δ) |", text.Stdout);
        Assert.Contains("| copa acc | ", text.Stdout);
    }

    [Fact]
    public void Eval_needs_something_to_measure_and_known_tasks()
    {
        var none = CliRunner.Run("eval", SharedPaths.Stories260K);
        Assert.Equal(1, none.ExitCode);
        Assert.Contains("DQ0141", none.Stderr);
        var missing = CliRunner.Run("eval", SharedPaths.Stories260K, "--tasks", "no_such_task", "--tasks-dir", Tasks);
        Assert.Equal(1, missing.ExitCode);
        Assert.Contains("DQ0140", missing.Stderr);
    }

    [Fact]
    public void Run_with_evaluate_writes_report_files_and_a_png_chart()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("quant.yaml"),
            $"version: 1\nmodel: {SharedPaths.Stories260K}\ncalibration:\n  data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")}\n  samples: 8\n  sequence_length: 64\n" +
            "quantize:\n  method: gptq\n  bits: 3\n  group_size: 16\noutput:\n  name: q3\n" +
            $"evaluate:\n  perplexity: {{ data: {Wiki}, sequence_length: 256, max_sequences: 4 }}\n  tasks: {{ names: [copa, winogrande], dir: {Tasks}, limit: 10 }}\n");
        var r = CliRunner.Run("run", dir.File("quant.yaml"), "--output", dir.Path);
        Assert.True(r.ExitCode == 0, r.Stderr);
        string report = dir.File("q3-report");
        var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(report, "report.json"))).RootElement;
        Assert.Equal(2, json.GetProperty("tasks").GetArrayLength());
        Assert.Equal(35, json.GetProperty("layers").EnumerateArray().Count(l => l.GetProperty("quantized").GetBoolean()));
        Assert.True(json.GetProperty("peak_rss_bytes").GetInt64() > 0);
        Assert.True(json.GetProperty("perplexity").GetProperty("after").GetDouble() > json.GetProperty("perplexity").GetProperty("before").GetDouble());
        string md = File.ReadAllText(Path.Combine(report, "report.md"));
        Assert.Contains("| copa acc (10 docs) |", md);
        Assert.Contains("layer-loss.png", md);
        var png = File.ReadAllBytes(Path.Combine(report, "layer-loss.png"));
        Assert.True(png.Length > 10_000);
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, png[..4]);
        // The package records the task figures too.
        var info = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir.File("q3"), "dotquant.json"))).RootElement;
        Assert.Equal(2, info.GetProperty("evaluation").GetProperty("tasks").GetArrayLength());
    }
}
