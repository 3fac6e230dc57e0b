using System.Text.Json;
using System.Text.Json.Nodes;
using DotQuant.Engine.Calibration;
using DotQuant.Tests;
using DotQuant.Engine.Manifest;

namespace DotQuant.Bench;

/// <summary>`dotquant-bench pins --out FILE`: runs every method on stories260K with small, fixed
/// settings and records the SHA-256 of every tensor it writes and the perplexities (and one zero-shot
/// task) before and after. The file is the test oracle that pins a pipeline rewrite to the results of
/// the pipeline it replaces (tests/Engine.Tests/PipelinePinTests.cs reads it).</summary>
static class Pins
{
    /// <summary>The manifest every case shares; QUANTIZE is the case's quantize section.</summary>
    public const string Template =
        "version: 1\nmodel: {MODEL}\ncalibration:\n  data: {CALIB}\n  samples: 16\n  sequence_length: 64\n  seed: 3\n" +
        "quantize:\n{QUANTIZE}output:\n  name: out\n{FORMAT}" +
        "evaluate:\n  perplexity: { data: {WIKI}, sequence_length: 256, max_sequences: 8 }\n{TASKS}";

    public static readonly (string Name, string Quantize, string Format, bool Tasks)[] Cases =
    [
        ("rtn-w4-g16", "  method: rtn\n  bits: 4\n  group_size: 16\n", "", true),
        ("gptq-w4-g16", "  method: gptq\n  bits: 4\n  group_size: 16\n", "", true),
        ("gptq-w3-g16-actorder-sym", "  method: gptq\n  bits: 3\n  group_size: 16\n  act_order: true\n  symmetric: true\n", "", false),
        ("gptq-w4-g16-static", "  method: gptq\n  bits: 4\n  group_size: 16\n  act_order: true\n  static_groups: true\n", "", false),
        ("gptq-w2-gpc-mse", "  method: gptq\n  bits: 2\n  group_size: -1\n  mse_clip: true\n", "", false),
        ("gptq-w3-g16-layers", "  method: gptq\n  bits: 3\n  group_size: 16\n  layers:\n    - { match: \"model.layers.0.*\", skip: true }\n    - { match: \"model.layers.*.mlp.down_proj\", bits: 8 }\n", "", false),
        ("gptq-w4-g16-gptqformat", "  method: gptq\n  bits: 4\n  group_size: 16\n  symmetric: true\n", "  format: gptq\n", false),
        ("gptaq-w3-g16", "  method: gptaq\n  bits: 3\n  group_size: 16\n", "", false),
        ("gptq-rescomp-w2-g16", "  method: gptq\n  bits: 2\n  group_size: 16\n  compensation_aware: true\n", "", false),
        ("gptaq-rescomp-w3-g16", "  method: gptaq\n  bits: 3\n  group_size: 16\n  compensation_aware: true\n", "", true),
        ("oac-gptq-w2-g16", "  method: gptq\n  bits: 2\n  group_size: 16\n  hessian: output_adaptive\n", "", false),
        ("oac-groups-sampled-gptq-w3", "  method: gptq\n  bits: 3\n  group_size: 16\n  hessian: output_adaptive\n  output_adaptive: { schedule: sequential_groups, labels: sampled, seed: 5 }\n", "", false),
        ("oac-once-spqr", "  method: spqr\n  hessian: output_adaptive\n  output_adaptive: { schedule: once }\n", "", false),
        ("spqr-w2", "  method: spqr\n", "", false),
        ("oac-spqr-w2", "  method: spqr\n  hessian: output_adaptive\n", "", true),
        ("billm", "  method: billm\n", "", false),
        ("oac-token-billm", "  method: billm\n  hessian: output_adaptive\n  output_adaptive: { fisher: token }\n", "", false),
        ("quarot-gptq-w3-g16", "  method: gptq\n  bits: 3\n  group_size: 16\n  rotate: hadamard\n", "", true),
        ("quarot-oac-spqr", "  method: spqr\n  rotate: hadamard\n  hessian: output_adaptive\n", "", false),
        ("quarot-gptaq-rescomp-w2", "  method: gptaq\n  bits: 2\n  group_size: 16\n  compensation_aware: true\n  rotate: hadamard\n  rotation: { seed: 4 }\n", "", false),
    ];

    /// <summary>How far a figure may move under other numerics (another thread count, another CPU's native
    /// kernels), relative for perplexity and absolute for zero-shot accuracy. Measured 12-07 against this
    /// file (portable, 2 threads): native AVX-512 kernels and 1 thread move every case's perplexity by at
    /// most 1.3e-4 (the default bound is 1e-3), except SpQR with OAC's H̄, whose outlier decisions cascade:
    /// 2.5e-2 (oac-spqr-w2) and 3.8e-2 (quarot-oac-spqr) with 156 of 292 tensors different, and piqa's
    /// acc_norm by 0.1 (4 of 40 items).</summary>
    public static (double Perplexity, double Accuracy) Tolerance(string name) =>
        name is "oac-spqr-w2" or "quarot-oac-spqr" or "oac-once-spqr" ? (0.08, 0.15) : (1e-3, 0.05);

    public static string Manifest(string template, string shared, string quantize, string format, bool tasks) => template
        .Replace("{MODEL}", Path.Combine(shared, "models", "stories260K"))
        .Replace("{CALIB}", Path.Combine(shared, "data", "wikitext2-tokenized", "valid.tokens"))
        .Replace("{WIKI}", Path.Combine(shared, "data", "wikitext2", "wiki.test.gptq-joined.txt"))
        .Replace("{QUANTIZE}", quantize)
        .Replace("{FORMAT}", format)
        .Replace("{TASKS}", tasks ? $"  tasks: {{ names: [piqa], dir: {Path.Combine(shared, "data", "zeroshot")}, limit: 40 }}\n" : "");

    public static int Run(string shared, string outFile)
    {
        var root = new JsonObject
        {
            ["produced_by"] = "dotnet run -c Release --project bench/DotQuant.Bench -- pins",
            ["numerics"] = TensorPins.Numerics(),
            ["template"] = Template,
            ["cases"] = new JsonArray(),
        };
        using var work = new TempFolder();
        foreach (var (name, quantize, format, tasks) in Cases)
        {
            Console.WriteLine($"== {name}");
            string dir = Path.Combine(work.Path, name);
            Directory.CreateDirectory(dir);
            string manifest = Path.Combine(dir, "quant.yaml");
            File.WriteAllText(manifest, Manifest(Template, shared, quantize, format, tasks));
            var r = QuantizeJob.Run(ManifestParser.Load(manifest), Path.Combine(dir, "build"));
            var c = new JsonObject
            {
                ["name"] = name,
                ["quantize"] = quantize,
                ["format"] = format,
                ["tasks"] = tasks,
                ["tolerance"] = new JsonObject { ["perplexity"] = Tolerance(name).Perplexity, ["accuracy"] = Tolerance(name).Accuracy },
                ["perplexity_before"] = r.Before!.Perplexity,
                ["perplexity_after"] = r.After!.Perplexity,
                ["tensors"] = new JsonObject(TensorPins.Of(r.Output).Select(kv => KeyValuePair.Create<string, JsonNode?>(kv.Key, kv.Value))),
            };
            if (tasks)
                c["piqa"] = new JsonObject
                {
                    ["acc_before"] = r.TasksBefore[0].Acc, ["acc_norm_before"] = r.TasksBefore[0].AccNorm,
                    ["acc_after"] = r.TasksAfter[0].Acc, ["acc_norm_after"] = r.TasksAfter[0].AccNorm,
                };
            root["cases"]!.AsArray().Add(c);
        }
        File.WriteAllText(outFile, root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        Console.WriteLine($"wrote {outFile}");
        return 0;
    }

    sealed class TempFolder : IDisposable
    {
        public string Path { get; } = Directory.CreateTempSubdirectory("dotquant-pins-").FullName;
        public void Dispose() { try { Directory.Delete(Path, true); } catch (IOException) { } }
    }
}
