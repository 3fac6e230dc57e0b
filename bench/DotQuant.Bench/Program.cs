using DotQuant.Tests;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using DotQuant.Bench;
using DotQuant.Engine.Evaluation;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using DotQuant.Engine.Tokenization;
using static TorchSharp.torch;

// Benchmarks of the engine foundation. `dotquant-bench all [--shared DIR] [--out FILE]` runs
// everything and writes the markdown report; `rss-load DIR mmap|readall` is the child process
// that measures peak RSS of loading one checkpoint.
CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
// The kernels the tool uses (Torch/Numerics), before anything loads libtorch.
DotQuant.Engine.Torch.Numerics.Apply();

if (args.Length >= 3 && args[0] == "rss-load")
    return RssLoad.Child(args[1], args[2]);
if (args.Length >= 3 && args[0] == "quantize-child")
    return OacCost.Child(args[1], args[2]);

string shared = Option("--shared") ?? Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "../../../../../../shared"));
string benchDir = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "../../../.."));
bool quick = args.Contains("--quick");
if (args.Length >= 4 && args[0] == "synthetic")
{
    // synthetic DIR 7b|70b LAYERS: a checkpoint of that shape for manual runs.
    var shape = args[2] switch { "70b" => BigModel.Llama70B, "tinyllama" => AuthorsGptq.TinyLlama.Shape, _ => BigModel.Llama7B };
    var sw = Stopwatch.StartNew();
    BigModel.Write(args[1], shape, int.Parse(args[3]), shared);
    Console.WriteLine($"wrote {args[1]} in {sw.Elapsed.TotalSeconds:F1} s");
    return 0;
}
if (args.Length > 0 && args[0] == "streaming")
{
    // The memory section of results.md (about two and a half hours; --quick for a smoke run).
    string memoryReport = Option("--out") ?? Path.Combine(benchDir, "results.md");
    Streaming.Run(shared, Path.GetFullPath(Path.Combine(benchDir, "..")), quick, section => Sections.Splice(memoryReport, Streaming.Marker, section));
    return 0;
}
if (args.Length >= 4 && args[0] == "limited")
{
    // limited BYTES DIR COMMAND ARGS...: one command under a hard memory limit, peak RssAnon sampled.
    var r = Limited.Run(long.Parse(args[1]), args[2], args[3], args[4..]);
    Console.WriteLine(r.Stdout.TrimEnd().Split('\n').LastOrDefault(l => l.Contains("memory plan") || l.Contains("\"memory\"")) ?? "");
    Console.WriteLine($"exit {r.ExitCode}, {r.Seconds:F1} s, peak RssAnon {r.PeakRssAnon / (double)(1L << 30):F2} GiB, peak RSS {r.PeakRss / (double)(1L << 30):F2} GiB, cgroup peak {(r.CgroupPeak ?? 0) / (double)(1L << 30):F2} GiB");
    if (r.ExitCode != 0) Console.WriteLine(r.Stderr);
    return r.ExitCode;
}
if (args.Length > 0 && args[0] == "reliability")
{
    // bench/reliability.md (issue 22): `reliability [gc-stress|chaos|disk-full|cache|fuzz|memory ...] [--out FILE]`.
    Reliability.Run(shared, Path.GetFullPath(Path.Combine(benchDir, "..")), Option("--out") ?? Path.Combine(benchDir, "reliability.md"), args[1..]);
    return 0;
}
if (args.Length > 0 && args[0] == "scale-out")
{
    // Issue 23: speed-up on pinned cores, transfer, the 70B projection (bench/results.md).
    Sections.Splice(Option("--out") ?? Path.Combine(benchDir, "results.md"), ScaleOut.Marker, ScaleOut.RunSpeed(shared, Path.GetFullPath(Path.Combine(benchDir, "..")), quick));
    return 0;
}
if (args.Length > 0 && args[0] == "scale-out-agreement")
{
    Sections.Splice(Option("--out") ?? Path.Combine(benchDir, "results.md"), ScaleOut.AgreementMarker, ScaleOut.RunAgreement(shared, Path.GetFullPath(Path.Combine(benchDir, "..")), quick));
    return 0;
}
if (args.Length > 0 && args[0] == "pins")
    return Pins.Run(shared, Option("--out") ?? Path.GetFullPath(Path.Combine(benchDir, "../tests/Engine.Tests/Golden/pipeline-pins.json")));
if (args.Length > 0 && args[0] == "quality")
{
    string file = Option("--out") ?? Path.Combine(benchDir, "quality.md");
    Quality.Run(shared, benchDir, file, quick);
    Sections.Splice(file, LowBit.Marker, LowBit.Run(shared, benchDir, quick));
    Sections.Splice(file, LowBit.SeedsMarker, LowBit.RunSeeds(shared, benchDir, quick));
    Sections.Splice(file, ZeroShotBench.Marker, ZeroShotBench.Run(shared, benchDir, quick));
    Sections.Splice(file, GgufQuality.Marker, GgufQuality.Run(shared, benchDir, quick));
    Sections.Splice(file, ImatrixQuality.Marker, ImatrixQuality.Run(shared, benchDir, quick));
    Sections.Splice(file, OnnxQuality.Marker, OnnxQuality.Run(shared, benchDir, quick));
    return 0;
}
if (args.Length > 0 && args[0] == "quality-gguf")
{
    Sections.Splice(Option("--out") ?? Path.Combine(benchDir, "quality.md"), GgufQuality.Marker, GgufQuality.Run(shared, benchDir, quick));
    return 0;
}
if (args.Length > 0 && args[0] == "quality-imatrix")
{
    Sections.Splice(Option("--out") ?? Path.Combine(benchDir, "quality.md"), ImatrixQuality.Marker, ImatrixQuality.Run(shared, benchDir, quick));
    return 0;
}
if (args.Length > 0 && args[0] == "quality-onnx")
{
    Sections.Splice(Option("--out") ?? Path.Combine(benchDir, "quality.md"), OnnxQuality.Marker, OnnxQuality.Run(shared, benchDir, quick));
    return 0;
}
if (args.Length > 0 && args[0] == "shared-cpu")
{
    Sections.Splice(Option("--out") ?? Path.Combine(benchDir, "results.md"), SharedCpu.Marker, SharedCpu.Run(shared, Path.GetFullPath(Path.Combine(benchDir, ".."))));
    return 0;
}
if (args.Length > 0 && AuthorsGptq.Setups.FirstOrDefault(x => x.Marker == args[0]) is { } authors)
{
    Sections.Splice(Option("--out") ?? Path.Combine(benchDir, "results.md"), authors.Marker, AuthorsGptq.Run(shared, Path.GetFullPath(Path.Combine(benchDir, "..")), args.Contains("--ours-only"), authors));
    return 0;
}
if (args.Length > 0 && args[0] == "blas-child")
    return BlasDispatch.Child();
if (args.Length > 0 && args[0] == "blas")
{
    Sections.Splice(Option("--out") ?? Path.Combine(benchDir, "results.md"), BlasDispatch.Marker, BlasDispatch.Run());
    return 0;
}
if (args.Length > 0 && args[0] == "families")
{
    Sections.Splice(Option("--out") ?? Path.Combine(benchDir, "results.md"), FamilyChecks.Marker, FamilyChecks.Run(shared));
    return 0;
}
if (args.Length > 0 && args[0] == "tokenizers")
{
    Sections.Splice(Option("--out") ?? Path.Combine(benchDir, "results.md"), TokenizerSpeed.Marker, TokenizerSpeed.Run(shared, quick));
    return 0;
}
if (args.Length > 0 && args[0] == "quality-zeroshot")
{
    Sections.Splice(Option("--out") ?? Path.Combine(benchDir, "quality.md"), ZeroShotBench.Marker, ZeroShotBench.Run(shared, benchDir, quick));
    return 0;
}
if (args.Length > 0 && args[0] == "everything")
{
    // Every figure of bench/quality.md, bench/results.md and bench/build.md from scratch, one process
    // per report so each starts clean.
    foreach (var sub in new[] { "quality", "all", "streaming", "build" })
    {
        Console.WriteLine($"== {sub}");
        Child.Run(false, quick ? [sub, "--shared", shared, "--quick"] : [sub, "--shared", shared]);
    }
    return 0;
}
if (args.Length > 0 && args[0] == "quality-seeds")
{
    Sections.Splice(Option("--out") ?? Path.Combine(benchDir, "quality.md"), LowBit.SeedsMarker, LowBit.RunSeeds(shared, benchDir, quick));
    return 0;
}
if (args.Length > 0 && args[0] == "quality-lowbit")
{
    // Reruns only the issue-5 section of quality.md.
    Sections.Splice(Option("--out") ?? Path.Combine(benchDir, "quality.md"), LowBit.Marker, LowBit.Run(shared, benchDir, quick));
    return 0;
}
if (args.Length > 0 && args[0] == "oac-cost")
{
    // Reruns only the OAC cost section of results.md.
    Sections.Splice(Option("--out") ?? Path.Combine(benchDir, "results.md"), OacCost.Marker, OacCost.Run(shared, quick));
    return 0;
}
if (args.Length > 0 && args[0] == "build")
{
    BuildTiming.Run(Path.GetFullPath(Path.Combine(benchDir, "..")), Option("--out") ?? Path.Combine(benchDir, "build.md"));
    return 0;
}
string outFile = Option("--out") ?? Path.Combine(benchDir, "results.md");
string command = "dotnet run -c Release --project bench/DotQuant.Bench -- all" + (quick ? " --quick" : "");

var report = new StringBuilder();
report.AppendLine("# Benchmark results");
report.AppendLine();
report.AppendLine($"Produced by `{command}` on {DateTime.UtcNow:yyyy-MM-dd} ({Environment.ProcessorCount} cores, libtorch threads {get_num_threads()}, {Machine.MemoryGiB():F0} GiB RAM, {Machine.CpuModel()}).");
report.AppendLine("Every figure below is measured by that command; nothing is typed in by hand.");
report.AppendLine();

// 1. Peak fp32 matmul throughput of this machine (the roofline for everything else).
double peak = Matmul.PeakGflops(2048, quick ? 5 : 20);
report.AppendLine("## fp32 matmul peak");
report.AppendLine();
report.AppendLine($"- 2048×2048 · 2048×2048 fp32 `torch.matmul`, best of runs: **{peak:F1} GFLOP/s**");
report.AppendLine();

// 2. Eval throughput on stories260K (tiny model: overhead-bound, not FLOP-bound).
string stories = Path.Combine(shared, "models", "stories260K");
string wiki = Path.Combine(shared, "data", "wikitext2", "wiki.test.gptq-joined.txt");
report.AppendLine("## Eval throughput");
report.AppendLine();
report.AppendLine("| model | dtype | seq | windows | tokens/s | linear GFLOP/s | % of matmul peak | perplexity |");
report.AppendLine("|---|---|---|---|---|---|---|---|");
{
    var tok = HfTokenizer.Load(stories);
    var ids = tok.Encode(File.ReadAllText(wiki));
    using var model = ModelLoader.Load(stories);
    var r = Perplexity.Windows(model, ids, 512, quick ? 100 : null);
    report.AppendLine(Row("stories260K", "F32", 512, r, LinearFlopsPerToken(model.Config), peak));
}

// 3. Synthetic Llama with realistic shapes, bf16 weights written by the engine.
string synth = Path.Combine(Path.GetTempPath(), "dotquant-bench-llama-2048");
var spec = new SyntheticModel.Spec
{
    ModelType = "llama", HiddenSize = 2048, IntermediateSize = 5632, Layers = 4, Heads = 32, KvHeads = 4,
    VocabSize = 32000, MaxPositions = 2048, TieWordEmbeddings = false, DType = ScalarType.BFloat16, Seed = 7,
};
var writeSw = Stopwatch.StartNew();
SyntheticModel.Write(synth, spec);
double writeSeconds = writeSw.Elapsed.TotalSeconds;
{
    using var model = ModelLoader.Load(synth);
    var gen = new TorchSharp.torch.Generator(11);
    var ids = randint(0, spec.VocabSize, [2048 * (quick ? 2 : 4)], generator: gen).data<long>().Select(v => (int)v).ToArray();
    Perplexity.Windows(model, ids, 2048, 1);   // warm-up
    var r = Perplexity.Windows(model, ids, 2048);
    report.AppendLine(Row("synthetic llama h2048 i5632 L4 (GQA 32/4, vocab 32000)", "BF16", 2048, r, LinearFlopsPerToken(model.Config), peak));
}
report.AppendLine();
report.AppendLine("Linear GFLOP/s counts 2·(parameters of every linear incl. lm_head) per token; attention score FLOPs are not counted.");
report.AppendLine($"Writing the synthetic bf16 checkpoint ({new FileInfo(Path.Combine(synth, "model.safetensors")).Length / 1e6:F0} MB) took {writeSeconds:F1} s.");
report.AppendLine();

// 4. Peak RSS while loading a >= 1 GB checkpoint, in child processes.
string big = Path.Combine(Path.GetTempPath(), "dotquant-bench-llama-1g");
SyntheticModel.Write(big, spec with { Layers = 11, Seed = 8 });
long fileBytes = new FileInfo(Path.Combine(big, "model.safetensors")).Length;
report.AppendLine("## Loading a ≥ 1 GB checkpoint");
report.AppendLine();
report.AppendLine($"Checkpoint: synthetic llama, 11 layers, bf16, {fileBytes / 1e9:F2} GB (`model.safetensors`). Each row is a fresh process (`dotquant-bench rss-load DIR MODE`); peak RSS is VmHWM.");
report.AppendLine();
report.AppendLine("| reader | load s | peak RSS | RSS − baseline | ÷ file size |");
report.AppendLine("|---|---|---|---|---|");
foreach (var mode in new[] { "mmap", "readall" })
{
    var m = RssLoad.Measure(big, mode);
    report.AppendLine($"| {(mode == "mmap" ? "DotQuant mmap reader (per-tensor views)" : "naive: File.ReadAllBytes + copy")} | {m.Seconds:F2} | {m.PeakBytes / 1e9:F2} GB | {(m.PeakBytes - m.BaselineBytes) / 1e9:F2} GB | {(double)(m.PeakBytes - m.BaselineBytes) / fileBytes:F2} |");
}
report.AppendLine();
report.AppendLine("Baseline is the process's VmRSS after libtorch is initialised and before the checkpoint is opened.");

// 5. Calibration cost: one big linear, and the whole of stories260K.
report.AppendLine();
report.AppendLine("## GPTQ time per layer");
report.AppendLine();
var layer = LayerTiming.Measure(sequences: quick ? 16 : 128);
report.AppendLine($"Synthetic 4096×4096 linear, H from {(quick ? 16 : 128)}×2048 correlated tokens, 4-bit, group 128 (`LayerTiming.cs`):");
report.AppendLine();
report.AppendLine("| phase | seconds |");
report.AppendLine("|---|---|");
report.AppendLine($"| statistics (H += XᵀX, fp32; {layer.Gflops:F0} GFLOP/s) | {layer.Statistics:F2} |");
report.AppendLine($"| factorization (damped Cholesky, inverse, Cholesky) | {layer.Factorization:F2} |");
report.AppendLine($"| column loop (quantize, error feedback, lazy 128-column updates) | {layer.ColumnLoop:F2} |");
report.AppendLine();
{
    string yaml = Path.Combine(Path.GetTempPath(), "dotquant-bench-stories.yaml");
    File.WriteAllText(yaml, $"version: 1\nmodel: {stories}\ncalibration:\n  data: {Path.Combine(shared, "data", "wikitext2-tokenized", "valid.tokens")}\n  samples: 128\n  sequence_length: 256\nquantize:\n  method: gptq\n  bits: 4\n  group_size: 16\noutput:\n  name: stories-gptq-w4\n");
    var sw = Stopwatch.StartNew();
    var result = DotQuant.Engine.Calibration.QuantizeJob.Run(DotQuant.Engine.Manifest.ManifestParser.Load(yaml), Path.GetTempPath());
    report.AppendLine($"Whole stories260K, GPTQ W4 g16, 128×256 calibration tokens, 35 linears, output written: **{sw.Elapsed.TotalSeconds:F1} s** (`dotnet quantize run` of the same manifest).");
    Directory.Delete(result.Output, true);
    File.Delete(yaml);
}

Directory.Delete(synth, true);
Directory.Delete(big, true);
// The memory section takes hours (`-- streaming`): keep the one already in the report.
string? streamingSection = Sections.Extract(outFile, Streaming.Marker);
File.WriteAllText(outFile, report.ToString());
if (streamingSection is not null) Sections.Splice(outFile, Streaming.Marker, streamingSection);
Sections.Splice(outFile, OacCost.Marker, OacCost.Run(shared, quick));
Console.Write(report.ToString());
Console.WriteLine($"written to {outFile}");
return 0;

string? Option(string name)
{
    int i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
}

static double LinearFlopsPerToken(ModelConfig c)
{
    long h = c.HiddenSize, q = (long)c.NumHeads * c.HeadDim, kv = (long)c.NumKvHeads * c.HeadDim, f = c.IntermediateSize;
    long perLayer = h * q + 2 * h * kv + q * h + 3 * h * f;
    return 2.0 * (perLayer * c.NumLayers + (long)c.VocabSize * h);
}

static string Row(string name, string dtype, int seq, PerplexityResult r, double flopsPerToken, double peak)
{
    double tps = r.Windows * (double)seq / r.Seconds;
    double gflops = tps * flopsPerToken / 1e9;
    return $"| {name} | {dtype} | {seq} | {r.Windows} | {tps:N0} | {gflops:F1} | {100 * gflops / peak:F0}% | {r.Perplexity:F2} |";
}
