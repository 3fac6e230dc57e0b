using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace DotQuant.Bench;

/// <summary>The results.md section on memory: a Llama-2-7B-shaped checkpoint quantized with
/// `dotnet-quantize run` inside a 6 GiB hard limit at 8, 16 and 32 layers (peak anonymous memory must
/// not grow with depth), evaluation in the same limit, one 70B-shaped block inside 20 GiB, and
/// stopping (SIGTERM inside a long solve) and resuming (SIGKILL, then --resume) on the 7B shape.</summary>
static class Streaming
{
    public const string Marker = "streaming";
    const long GiB = 1L << 30;

    /// <summary>Measures in order of importance (the deepest run first) and hands the section to
    /// <paramref name="publish"/> after every stage, so a bench stopped part-way still reports what it
    /// measured; stages not reached say so.</summary>
    public static void Run(string shared, string repo, bool quick, Action<string> publish)
    {
        string tool = Path.Combine(repo, "src", "Tool", "bin", "Release", "net10.0", "dotnet-quantize.dll");
        if (!File.Exists(tool)) throw new InvalidOperationException($"{tool} is missing: build the tool in Release (the bench project references it)");
        string root = Path.Combine(Path.GetTempPath(), "dotquant-bench-streaming");
        Directory.CreateDirectory(root);
        var depths = quick ? new[] { 1, 2, 4 } : new[] { 8, 16, 32 };
        int windows = quick ? 1 : 4;
        string valid = Path.Combine(shared, "data", "wikitext2-tokenized", "valid.tokens");
        string wiki = Path.Combine(shared, "data", "wikitext2", "wiki.test.gptq-joined.txt");
        string command = "dotnet run -c Release --project bench/DotQuant.Bench -- streaming" + (quick ? " --quick" : "");
        const string pending = "not measured (the bench stopped before this stage)";

        var write = Stopwatch.StartNew();
        string deepest = BigModel.Write(Path.Combine(root, $"llama7b-{depths[^1]}"), BigModel.Llama7B, depths[^1], shared);
        double writeSeconds = write.Elapsed.TotalSeconds;
        long bytes = Directory.GetFiles(deepest, "*.safetensors").Sum(f => new FileInfo(f).Length);
        int shards = Directory.GetFiles(deepest, "*.safetensors").Length;

        var rows = new Dictionary<int, string>();
        var peaks = new Dictionary<int, long>();
        var outputs = new Dictionary<int, string>();
        var evals = new List<string>();
        string? block70Row = null, stopLine = null, resumeLine = null;
        var started = DateTime.UtcNow;

        string Render()
        {
            var sb = new StringBuilder();
            sb.AppendLine("## Quantizing a model bigger than RAM");
            sb.AppendLine();
            sb.AppendLine($"Produced by `{command}` on {started:yyyy-MM-dd} ({Environment.ProcessorCount} cores, {Machine.MemoryGiB():F0} GiB RAM; " +
                          $"limits set with {(Limited.Controller() is { } c ? $"the cgroup controller at `{c}`" : "no cgroup (not root?): runs are measured without a limit")}). " +
                          "Stages run deepest first; the section is rewritten after each one.");
            sb.AppendLine();
            sb.AppendLine($"Checkpoint: synthetic Llama-2-7B shape (hidden 4096, intermediate 11008, 32/32 heads, vocab 32000, untied head), bf16 random weights, " +
                          $"{depths[^1]} layers = {bytes / 1e9:F1} GB in {shards} shards of ≤ 2 GB, the Mistral/Llama-2 32k tokenizer; written tensor by tensor" +
                          (writeSeconds > 1 ? $" in {writeSeconds:F0} s" : " (reused)") + ". The shallower checkpoints are its first blocks (their own config.json and index, the same shard files).");
            sb.AppendLine();
            sb.AppendLine("Each run is `dotnet-quantize run quant.yaml --format json` — GPTQ W4 g128, 8 × 512 calibration tokens of `valid.tokens`, output shards of ≤ 2 GB — " +
                          "in a fresh process inside a cgroup whose hard limit is 6 GiB (the kernel kills the process above it). Peak RssAnon (anonymous memory: tensors, streams, " +
                          "Hessians) is sampled every 100 ms; peak RSS and the cgroup's peak also count the mapped checkpoint's file pages, which the kernel drops under pressure. " +
                          "\"Predicted\" is the memory plan the run prints before any work.");
            sb.AppendLine();
            sb.AppendLine("| layers | limit | exit | minutes | s/block | peak RssAnon | predicted peak | peak RSS | cgroup peak |");
            sb.AppendLine("|---|---|---|---|---|---|---|---|---|");
            foreach (int d in depths) sb.AppendLine(rows.TryGetValue(d, out var row) ? row : $"| {d} | 6 GiB | {pending} |||||||");
            sb.AppendLine();
            if (peaks.Count > 1)
            {
                var measured = depths.Where(peaks.ContainsKey).ToArray();
                double spread = peaks.Values.Max() / (double)peaks.Values.Min() - 1;
                sb.AppendLine($"Peak RssAnon across {string.Join(", ", measured)} layers: {string.Join(" / ", measured.Select(d => $"{peaks[d] / (double)GiB:F2}"))} GiB — " +
                              $"the largest is {spread * 100:F1}% above the smallest (acceptance: within 10%).");
                sb.AppendLine();
            }
            sb.AppendLine($"Evaluation in the same 6 GiB limit: `dotnet-quantize eval MODEL --data wiki.test.gptq-joined.txt --sequence-length 2048 --max-windows {windows}` (layer-major: every window through block b, then b+1).");
            sb.AppendLine();
            sb.AppendLine("| model | exit | minutes | peak RssAnon | peak RSS | perplexity |");
            sb.AppendLine("|---|---|---|---|---|---|");
            foreach (var e in evals) sb.AppendLine(e);
            if (evals.Count < 2) sb.AppendLine($"| {(evals.Count == 0 ? "float" : "GPTQ W4 g128 package")}, {depths[^1]} layers | {pending} |||||");
            sb.AppendLine();
            sb.AppendLine("(Random weights: the perplexity only shows that both runs completed; it is near the vocabulary size.)");
            sb.AppendLine();
            sb.AppendLine("One Llama-2-70B-shaped block (hidden 8192, intermediate 28672, 64/8 heads; down_proj's H is 28672² fp32 = 3.3 GB) with embeddings and head, same settings, inside a 20 GiB limit:");
            sb.AppendLine();
            sb.AppendLine("| layers | limit | exit | minutes | s/block | peak RssAnon | predicted peak | peak RSS | cgroup peak |");
            sb.AppendLine("|---|---|---|---|---|---|---|---|---|");
            sb.AppendLine(block70Row ?? $"| 1 (70B shape) | 20 GiB | {pending} |||||||");
            sb.AppendLine();
            sb.AppendLine(stopLine ?? $"SIGTERM inside a solve: {pending}.");
            sb.AppendLine();
            sb.AppendLine(resumeLine ?? $"SIGKILL and --resume: {pending}.");
            return sb.ToString();
        }

        void Depth(int layers)
        {
            string model = layers == depths[^1] ? deepest : BigModel.Truncated(deepest, Path.Combine(root, $"llama7b-{layers}"), layers);
            string work = Path.Combine(root, $"run-{layers}");
            var r = Quantize(tool, work, model, valid, 6 * GiB);
            peaks[layers] = r.PeakRssAnon;
            outputs[layers] = Path.Combine(work, "out");
            rows[layers] = Row($"{layers}", 6 * GiB, r, r.Seconds / layers, Predicted(r.Stdout));
            Console.WriteLine($"{layers} layers: exit {r.ExitCode}, {r.Seconds:F0} s, peak RssAnon {r.PeakRssAnon / (double)GiB:F2} GiB");
            publish(Render());
        }

        void Eval(string label, string model)
        {
            var r = Limited.Run(6 * GiB, root, "dotnet", [tool, "eval", model, "--data", wiki, "--sequence-length", "2048", "--max-windows", windows.ToString(CultureInfo.InvariantCulture), "--format", "json"]);
            string ppl = r.ExitCode == 0 ? JsonDocument.Parse(r.Stdout.TrimEnd().Split('\n')[^1]).RootElement.GetProperty("perplexity").GetDouble().ToString("F1", CultureInfo.InvariantCulture) : "—";
            evals.Add($"| {label} | {r.ExitCode} | {r.Seconds / 60:F1} | {G(r.PeakRssAnon)} | {G(r.PeakRss)} | {ppl} |");
            Console.WriteLine($"eval {label}: exit {r.ExitCode}, {r.Seconds:F0} s, peak RssAnon {G(r.PeakRssAnon)}");
            publish(Render());
        }

        publish(Render());
        Depth(depths[^1]);
        Eval($"float, {depths[^1]} layers", deepest);

        // One 70B-shaped block.
        string big = BigModel.Write(Path.Combine(root, "llama70b-1"), BigModel.Llama70B, 1, shared);
        var block70 = Quantize(tool, Path.Combine(root, "run-70b"), big, valid, 20 * GiB);
        block70Row = Row("1 (70B shape)", 20 * GiB, block70, block70.Seconds, Predicted(block70.Stdout));
        Console.WriteLine($"70B block: exit {block70.ExitCode}, {block70.Seconds:F0} s, peak RssAnon {G(block70.PeakRssAnon)}");
        publish(Render());

        foreach (int layers in depths[..^1]) Depth(layers);

        // Stopping: SIGTERM while block 0's down_proj is in libtorch (statistics, 11008² factorization).
        int small = depths[0];
        string smallModel = small == depths[^1] ? deepest : Path.Combine(root, $"llama7b-{small}");
        double signalAt = 0;
        var stopped = Quantize(tool, Path.Combine(root, "sigterm"), smallModel, valid, 6 * GiB, onLine: (line, p) =>
        {
            if (signalAt > 0 || !line.Contains("\"layer\":\"model.layers.0.mlp.up_proj\"")) return;
            Thread.Sleep(5000);
            signalAt = Stopwatch.GetTimestamp();
            using var kill = Process.Start("kill", ["-TERM", p.Id.ToString()]);
            kill!.WaitForExit();
        });
        double stopSeconds = Stopwatch.GetElapsedTime((long)signalAt).TotalSeconds;
        stopLine = $"SIGTERM 5 s into block 0's down_proj (its statistics and 11008² factorization are single libtorch calls): the process exited with code {stopped.ExitCode} " +
                   $"{stopSeconds:F2} s after the signal (a cancellation token stops the solver loops at once; a 1 s deadline ends what a native call holds up), no output folder written.";
        publish(Render());

        // Resuming: SIGKILL after block 3 of the shallowest run (of at least two blocks), then --resume;
        // bytes against the uninterrupted run.
        small = depths.First(d => d >= 2);
        smallModel = small == depths[^1] ? deepest : Path.Combine(root, $"llama7b-{small}");
        string resumeWork = Path.Combine(root, "resume");
        int killAfter = Math.Min(3, small - 2);
        var killed = Quantize(tool, resumeWork, smallModel, valid, 6 * GiB, resume: true, onLine: (line, p) =>
        {
            if (line.Contains($"\"event\":\"block\",\"message\":\"block {killAfter + 1}/")) p.Kill(entireProcessTree: true);
        });
        var resumed = Quantize(tool, resumeWork, smallModel, valid, 6 * GiB, resume: true);
        bool same = resumed.ExitCode == 0 && Files(outputs[small]).SequenceEqual(Files(Path.Combine(resumeWork, "out")));
        resumeLine = $"SIGKILL after block {killAfter} of the {small}-layer run (exit {killed.ExitCode} after {killed.Seconds / 60:F1} min), then the same command with `--resume`: " +
                     $"{resumed.Seconds / 60:F1} min for the remaining {small - killAfter - 1} blocks (peak RssAnon {G(resumed.PeakRssAnon)}); every output file byte-identical to the uninterrupted run: **{(same ? "yes" : "NO")}**.";
        publish(Render());

        Eval($"GPTQ W4 g128 package, {depths[^1]} layers", outputs[depths[^1]]);

        foreach (var d in Directory.GetDirectories(root).Where(d => !Path.GetFileName(d).StartsWith("llama", StringComparison.Ordinal)))
            Directory.Delete(d, true);
    }

    static Limited.Result Quantize(string tool, string work, string model, string valid, long limit, bool resume = false, Action<string, Process>? onLine = null)
    {
        if (!resume && Directory.Exists(work)) Directory.Delete(work, true);
        Directory.CreateDirectory(work);
        File.WriteAllText(Path.Combine(work, "quant.yaml"),
            $"version: 1\nmodel: {model}\ncalibration:\n  data: {valid}\n  samples: 8\n  sequence_length: 512\n" +
            "quantize:\n  method: gptq\n  bits: 4\n  group_size: 128\noutput:\n  name: out\n  shard_size: 2GB\n");
        var args = new List<string> { tool, "run", "quant.yaml", "--format", "json", "--max-memory", limit.ToString(CultureInfo.InvariantCulture) };
        if (resume) args.Add("--resume");
        return Limited.Run(limit, work, "dotnet", args, onLine);
    }

    static long? Predicted(string stdout)
    {
        foreach (var line in stdout.Split('\n'))
            if (line.Contains("\"event\":\"memory\""))
                return JsonDocument.Parse(line).RootElement.GetProperty("plan").GetProperty("peak_bytes").GetInt64();
        return null;
    }

    static string Row(string layers, long limit, Limited.Result r, double perBlock, long? predicted) =>
        $"| {layers} | {limit / GiB} GiB | {r.ExitCode} | {r.Seconds / 60:F1} | {perBlock:F0} | {G(r.PeakRssAnon)} | {(predicted is long p ? G(p) : "—")} | {G(r.PeakRss)} | {(r.CgroupPeak is long c ? G(c) : "—")} |";

    static string G(long bytes) => $"{bytes / (double)GiB:F2} GiB";

    static List<(string, string)> Files(string folder) =>
        Directory.GetFiles(folder).Order(StringComparer.Ordinal)
            .Select(f =>
            {
                using var s = File.OpenRead(f);
                return (Path.GetFileName(f), Convert.ToHexString(SHA256.HashData(s)));
            }).ToList();
}
