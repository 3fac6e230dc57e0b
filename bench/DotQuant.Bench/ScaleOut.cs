using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using DotQuant.Tests;

namespace DotQuant.Bench;

/// <summary>`dotquant-bench scale-out`: a distributed run against the same run in one process, on this
/// machine's cores. The speed section pins each process with taskset: the single process on core 0, one
/// worker on core 1, two workers on cores 0 and 1 (the coordinator on core 0 each time: it solves while the
/// workers wait, and waits while they compute). From the measured per-block compute, solve time and
/// transfer it projects Llama-2-70B. The agreement section runs llama-tiny with each method in one process
/// and on 2 and 3 workers.</summary>
static class ScaleOut
{
    public const string Marker = "scale-out";
    public const string AgreementMarker = "scale-out-agreement";

    static readonly BigModel.Shape Synthetic = new("TinyLlama-shaped", 2048, 5632, 32, 4);
    static readonly BigModel.Shape Llama70B = BigModel.Llama70B;
    const int Length = 512;

    sealed record Run(double Seconds, JsonObject Summary, JsonObject? Cluster, string Folder)
    {
        public double Phase(string name) => Summary["phases"]?[name] is { } v ? (double)v : 0;
        public string Digest => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(Path.Combine(Folder, "out", "model.safetensors"))));
        public double? After => Summary["perplexity"]?["after"] is { } v ? (double)v : null;
    }

    static string Tool(string repo)
    {
        string tool = Path.Combine(repo, "src", "Tool", "bin", "Release", "net10.0", "dotnet-quantize.dll");
        if (!File.Exists(tool)) throw new InvalidOperationException($"build the tool first: dotnet build -c Release src/Tool ({tool})");
        return tool;
    }

    /// <summary>`run` of <paramref name="manifest"/>, pinned to <paramref name="core"/> when given, with the JSON events parsed.</summary>
    static Run Quantize(string tool, string manifest, string folder, int? core, params string[] extra)
    {
        if (Directory.Exists(folder)) Directory.Delete(folder, true);
        var psi = new ProcessStartInfo(core is null ? "dotnet" : "taskset") { RedirectStandardOutput = true, RedirectStandardError = true };
        if (core is int c) foreach (var a in new[] { "-c", c.ToString(CultureInfo.InvariantCulture), "dotnet" }) psi.ArgumentList.Add(a);
        foreach (var a in new[] { tool, "run", manifest, "--output", folder, "--threads", "1", "--format", "json" }.Concat(extra)) psi.ArgumentList.Add(a);
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        var lines = p.StandardOutput.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"run {string.Join(' ', extra)} failed ({p.ExitCode}): {stderr.Result}");
        var events = lines.Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        var cluster = events.LastOrDefault(e => e["cluster"] is not null)?["cluster"]!.AsObject();
        var summary = events.Last(e => (string?)e["event"] == "summary");
        Console.WriteLine($"  {sw.Elapsed.TotalSeconds:F1} s; phases {summary["phases"]!.ToJsonString()}{(cluster is null ? "" : $"; cluster {cluster.ToJsonString()}")}");
        return new Run(sw.Elapsed.TotalSeconds, summary, cluster, folder);
    }

    static string Manifest(string root, string name, string model, string data, int samples, string quantize, string? evaluate)
    {
        string file = Path.Combine(root, name + ".yaml");
        File.WriteAllText(file, $"version: 1\nmodel: {model}\ncalibration:\n  data: {data}\n  samples: {samples}\n  sequence_length: {Length}\n" +
                                $"quantize:\n{quantize}output:\n  name: out\n{evaluate}");
        return file;
    }

    public static string RunSpeed(string shared, string repo, bool quick)
    {
        string tool = Tool(repo);
        if (Environment.ProcessorCount < 2) throw new InvalidOperationException("scale-out pins two workers to two cores: this machine has one");
        string root = Path.Combine(Path.GetTempPath(), "dotquant-scale-out");
        Directory.CreateDirectory(root);
        // 256 sequences of 512 (131,072 tokens, half the papers' 128 × 2048): sixteen batches, two shards of eight.
        // At 128 × 512 the serial part (the coordinator's solves, load, write, transfer: about 60 s) held two
        // workers to 1.65× over one (2026-12-07, before the spread solves and the smaller transfers).
        int layers = quick ? 2 : 4, samples = quick ? 32 : 256;
        string model = BigModel.Write(Path.Combine(root, $"model-{layers}"), Synthetic, layers, shared);
        string data = Path.Combine(shared, "data", "wikitext2-tokenized", "valid.tokens");
        string manifest = Manifest(root, "speed", model, data, samples, "  method: gptq\n  bits: 4\n  group_size: 128\n", null);

        Console.WriteLine("single process on core 0");
        var single = Quantize(tool, manifest, Path.Combine(root, "single"), 0);
        var runs = new List<(int Workers, Run Run)>();
        foreach (var (workers, pinned) in new[] { (1, new[] { 1 }), (2, new[] { 0, 1 }) })
        {
            Console.WriteLine($"{workers} worker(s) on cores {string.Join(",", pinned)}, coordinator on core 0");
            using var w = WorkerProcesses.Start(tool, $"localhost:{WorkerProcesses.FreePortPair()}", workers, 1, cores: pinned);
            runs.Add((workers, Quantize(tool, manifest, Path.Combine(root, $"workers-{workers}"), 0, "--cluster", w.Cluster, "--workers", workers.ToString(CultureInfo.InvariantCulture))));
        }
        var one = runs[0].Run;
        var two = runs[1].Run;
        double speedUp = one.Seconds / two.Seconds;
        long tokens = (long)samples * Length;

        var sb = new StringBuilder();
        sb.AppendLine("## Scale-out: one run over several workers");
        sb.AppendLine();
        sb.AppendLine($"Produced by `dotnet build -c Release src/Tool && dotnet run -c Release --project bench/DotQuant.Bench -- scale-out{(quick ? " --quick" : "")}` on {DateTime.UtcNow:yyyy-MM-dd} " +
                      $"({Environment.ProcessorCount} cores, every process `--threads 1` and pinned with taskset).");
        sb.AppendLine($"Model: synthetic {Synthetic.Name} Llama ({layers} blocks, hidden {Synthetic.Hidden}, intermediate {Synthetic.Intermediate}, GQA {Synthetic.Heads}/{Synthetic.KvHeads}, bf16), " +
                      $"GPTQ W4 g128, {samples} × {Length} calibration tokens of WikiText-2 valid; no evaluation. Whole `run` wall time, model load and write included.");
        sb.AppendLine();
        sb.AppendLine("| configuration | seconds | × one worker | statistics s on the slowest shard | forwards and XᵀX s (the coordinator: waiting on the workers) | solve s | output |");
        sb.AppendLine("|---|---|---|---|---|---|---|");
        string Output(Run r) => r.Digest == single.Digest ? "the single process's bytes" : "differs from the single process";
        sb.AppendLine(Row("one process, core 0", single, null));
        foreach (var (workers, run) in runs)
            sb.AppendLine(Row(workers == 1 ? "1 worker on core 1 (coordinator on core 0)" : "2 workers on cores 0 and 1 (coordinator on core 0)", run, one));
        string Row(string label, Run r, Run? baseline) => string.Create(CultureInfo.InvariantCulture,
            $"| {label} | {r.Seconds:F1} | {(baseline is null ? "" : $"{baseline.Seconds / r.Seconds:F2}×")} | {(r.Cluster is { } c ? $"{(double)c["slowest_statistics_seconds"]!:F1}" : "")} | " +
            $"{Compute(r):F1} | {r.Phase("solve") + r.Phase("factorization"):F1} | {Output(r)} |");
        static double Compute(Run r) => r.Phase("capture") + r.Phase("xtx") + r.Phase("advance");
        sb.AppendLine();
        sb.AppendLine(string.Create(CultureInfo.InvariantCulture, $"**Speed-up of 2 workers over 1: {speedUp:F2}×** (target ≥ 1.7×)."));
        sb.AppendLine();

        // Transfer, per block, as the coordinator measured it on loopback.
        sb.AppendLine("| workers | statistics in per block | solved linears out per block | solves on the workers: statistics out and results back, per block | shard states per block | statistics MB/s | solved linears MB/s | solves on the workers s |");
        sb.AppendLine("|---|---|---|---|---|---|---|---|");
        foreach (var (workers, run) in runs)
        {
            var c = run.Cluster!;
            double Mb(string key) => (long)c[key]! / 1e6 / layers;
            sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {workers} | {Mb("statistics_bytes"):F0} MB | {Mb("weights_bytes"):F0} MB | {Mb("solve_bytes"):F0} MB | {Mb("state_bytes"):F0} MB | {Rate(c, "statistics"):F0} | {Rate(c, "weights"):F0} | {(double)c["solve_seconds"]!:F1} |"));
        }
        static double Rate(JsonObject c, string what) => (long)c[what + "_bytes"]! / 1e6 / Math.Max(1e-9, (double)c[what + "_transfer_seconds"]!);
        sb.AppendLine();
        sb.AppendLine("Statistics are fp64 sums (8 bytes per element, per worker per group; a symmetric H travels as its upper triangle), solved linears their");
        sb.AppendLine("wire form (a byte per 4-bit code with the groups' scales and zeros: what each worker rebuilds the coordinator's weight from, per worker),");
        sb.AppendLine("the solves on the workers gate/up's scaled fp32 H sent to the two workers that solve them and the solved linears read back (q/k/v,");
        sb.AppendLine("whose spread would save under a quarter, o and down are solved on the coordinator), shard states the streams each worker saves to");
        sb.AppendLine("the coordinator after a block (its resume point). MB/s counts Orleans' chunked grain calls on loopback, serialization and the");
        sb.AppendLine("receiver's unpacking included, with a worker on the coordinator's core.");
        sb.AppendLine();

        // Cost model from the single process's per-block compute and solve on one core and the measured throughput.
        double compute1 = Compute(single) / layers;       // s per block, one core
        double solve1 = (single.Phase("solve") + single.Phase("factorization")) / layers;
        double measured = (long)two.Cluster!["statistics_bytes"]! / Math.Max(1e-9, (double)two.Cluster!["statistics_transfer_seconds"]!);
        // Bytes per weight of a solved linear on the wire, as measured (codes, scales, zeros, group indices).
        double wireBytesPerWeight = (long)two.Cluster!["weights_bytes"]! / 2.0 / layers / (WeightBytes(Synthetic) / 4);
        const double lineRate = 1.25e9;
        double computeRate = CalibrationFlops(Synthetic, tokens, Length) / compute1;
        double solveRate = SolveFlops(Synthetic) / solve1;
        const int cores = 16, blocks = 80, samples70 = 128, length70 = 2048;
        long tokens70 = (long)samples70 * length70;
        sb.AppendLine("### Projection: Llama-2-70B, 128 × 2048 calibration tokens, machines of 16 cores on 10 GbE");
        sb.AppendLine();
        sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"Measured here on one core (the single process): the forwards and XᵀX ran at {computeRate / 1e9:F1} GFLOP/s and the GPTQ solves at {solveRate / 1e9:F1} GFLOP/s " +
            $"(FLOPs counted from the shapes: 2·params·T for the forward, 4·T·L·h for attention, 2·T·n² per group's XᵀX; 2·m·n² + 4/3·n³ per solve). " +
            $"Assumed: a 16-core machine does 16× one core's rate; gate and up solved on two workers at once, q/k/v, o and down on the coordinator (as DistributedSolves places them); " +
            $"all transfer goes through the coordinator's link (statistics from every worker, solved linears to every worker at {wireBytesPerWeight:F2} bytes per weight as measured, " +
            $"the H of the spread solves out and their results back, " +
            $"the shard states once), at the rate measured here on loopback ({measured / 1e6:F0} MB/s: Orleans' serialization on one core each side) or at 10 GbE's line rate " +
            $"(1250 MB/s, if serialization keeps up); nothing overlaps."));
        sb.AppendLine();
        sb.AppendLine("| machines | compute s/block | solve s/block | bytes/block | at the measured rate: transfer s, hours for 80 blocks, × one machine | at 10 GbE line rate: transfer s, hours, × one machine |");
        sb.AppendLine("|---|---|---|---|---|---|");
        double compute1Machine = 0;
        var projected = new List<(int Machines, double Measured, double Line)>();
        foreach (int machines in new[] { 1, 8, 32 })
        {
            double compute = CalibrationFlops(Llama70B, tokens70, length70) / (computeRate * cores * machines);
            double solve = (machines == 1 ? SolveFlops(Llama70B) : SpreadSolveFlops(Llama70B)) / (solveRate * cores);
            double bytes = machines == 1 ? 0 : machines * (StatisticsBytes(Llama70B) + WeightBytes(Llama70B) / 4 * wireBytesPerWeight) + SolveBytes(Llama70B) + tokens70 * Llama70B.Hidden * 4.0;
            if (machines == 1) compute1Machine = compute + solve;
            double atMeasured = compute + solve + bytes / Math.Min(measured, lineRate), atLine = compute + solve + bytes / lineRate;
            projected.Add((machines, atMeasured, atLine));
            sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {machines} | {compute:F0} | {solve:F0} | {bytes / 1e9:F1} GB | {bytes / Math.Min(measured, lineRate):F0} s, {atMeasured * blocks / 3600:F1} h, {compute1Machine / atMeasured:F2}× | " +
                $"{bytes / lineRate:F0} s, {atLine * blocks / 3600:F1} h, {compute1Machine / atLine:F2}× |"));
        }
        sb.AppendLine();
        string Verdict(Func<(int Machines, double Measured, double Line), double> perBlock)
        {
            var best = projected.MinBy(perBlock);
            return best.Machines == projected[^1].Machines ? $"more machines still pay at {best.Machines}" : $"{best.Machines} machines are the fastest of these";
        }
        sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"Per block and worker the 70B run sends {StatisticsBytes(Llama70B) / 1e9:F1} GB of fp64 statistics (upper triangles) and receives {WeightBytes(Llama70B) / 4 * wireBytesPerWeight / 1e9:F2} GB of solved linears; " +
            $"the states are {tokens70 * Llama70B.Hidden * 4.0 / 1e9:F1} GB per block in all. At the measured rate {Verdict(p => p.Measured)}; at line rate {Verdict(p => p.Line)}. " +
            $"Through one coordinator the transfer grows with the workers while the compute shrinks. What would move that bound (not built): summing the statistics " +
            $"in a tree among the workers (or in fp32 where the agreement allows), keeping the shard states on shared storage, splitting down_proj's solve by rows."));
        return sb.ToString();
    }

    /// <summary>Per block: the forward (2·params per token, attention 4·L·h per token) and the XᵀX of each group's input (2·n² per token).</summary>
    static double CalibrationFlops(BigModel.Shape s, long tokens, int length)
    {
        double h = s.Hidden, f = s.Intermediate, kv = (double)s.KvHeads * (s.Hidden / s.Heads);
        double parameters = 2 * h * h + 2 * h * kv + 3 * h * f;
        return tokens * (2 * parameters + 4.0 * length * h + 2 * (3 * h * h + f * f));
    }

    /// <summary>Per block: GPTQ's solves, 2·m·n² for the column loop and 4/3·n³ for the factorizations per linear.</summary>
    static double SolveFlops(BigModel.Shape s)
    {
        double h = s.Hidden, f = s.Intermediate, kv = (double)s.KvHeads * (s.Hidden / s.Heads);
        var linears = new (double M, double N)[] { (h, h), (kv, h), (kv, h), (h, h), (f, h), (f, h), (h, f) };
        return linears.Select(l => 2 * l.M * l.N * l.N + 4.0 / 3 * l.N * l.N * l.N).Sum();
    }

    /// <summary>One worker's fp64 sums per block: q/k/v, o, gate/up share an input of width h; down's is f; each symmetric, sent as its upper triangle.</summary>
    static double StatisticsBytes(BigModel.Shape s) => 8.0 * (3.0 * s.Hidden * (s.Hidden + 1) / 2 + (double)s.Intermediate * (s.Intermediate + 1) / 2);

    /// <summary>Per block as DistributedSolves places it: gate against up on two workers; q/k/v on the coordinator
    /// (with GQA, q against k and v would save under a quarter of the group's FLOPs), o and down alone.</summary>
    static double SpreadSolveFlops(BigModel.Shape s)
    {
        double h = s.Hidden, f = s.Intermediate, kv = (double)s.KvHeads * (s.Hidden / s.Heads), factor = 4.0 / 3 * h * h * h;
        double qkv = 2 * h * h * h + 2 * 2 * kv * h * h + factor;
        return qkv + (2 * h * h * h + factor) + (2 * f * h * h + factor) + (2 * h * f * f + 4.0 / 3 * f * f * f);
    }

    /// <summary>Per block: gate/up's fp32 H to each of the two solving workers (the solved linears come back at wire size, counted with the broadcast).</summary>
    static double SolveBytes(BigModel.Shape s) => 2 * 4.0 * s.Hidden * s.Hidden;

    static double WeightBytes(BigModel.Shape s)
    {
        double h = s.Hidden, f = s.Intermediate, kv = (double)s.KvHeads * (s.Hidden / s.Heads);
        return 4 * (2 * h * h + 2 * h * kv + 3 * h * f);
    }

    /// <summary>llama-tiny with each method in one process and on 2 and 3 workers (unpinned, `--threads 1`):
    /// perplexity and whether the bytes are the single process's.</summary>
    public static string RunAgreement(string shared, string repo, bool quick)
    {
        string tool = Tool(repo);
        string root = Path.Combine(Path.GetTempPath(), "dotquant-scale-out-agreement");
        Directory.CreateDirectory(root);
        string model = Path.Combine(shared, "models", "llama-tiny");
        string data = Path.Combine(shared, "data", "wikitext2-tokenized", "valid.tokens");
        int samples = quick ? 48 : 128, windows = quick ? 8 : 40;
        string evaluate = $"evaluate:\n  perplexity: {{ data: {Path.Combine(shared, "data", "wikitext2", "wiki.test.gptq-joined.txt")}, sequence_length: {Length}, max_sequences: {windows} }}\n";
        var methods = new (string Label, string Quantize)[]
        {
            ("GPTQ W4 g128", "  method: gptq\n  bits: 4\n  group_size: 128\n"),
            ("GPTAQ + ResComp W2 g128", "  method: gptaq\n  bits: 2\n  group_size: 128\n  compensation_aware: true\n"),
            ("QuaRot + GPTQ W3 g128", "  method: gptq\n  bits: 3\n  group_size: 128\n  rotate: hadamard\n"),
            ("OAC + SpQR", "  method: spqr\n  hessian: output_adaptive\n"),
        };
        var sb = new StringBuilder();
        sb.AppendLine("## Scale-out: agreement with one process");
        sb.AppendLine();
        sb.AppendLine($"Produced by `dotnet build -c Release src/Tool && dotnet run -c Release --project bench/DotQuant.Bench -- scale-out-agreement{(quick ? " --quick" : "")}` on {DateTime.UtcNow:yyyy-MM-dd}.");
        sb.AppendLine($"llama-tiny, {samples} × {Length} calibration tokens, `--threads 1`; perplexity over {windows} windows of {Length} of WikiText-2 test; workers on localhost clustering.");
        sb.AppendLine();
        sb.AppendLine("| method | perplexity: one process / 2 workers / 3 workers | largest difference | model.safetensors vs one process | exchanged per block (3 workers) |");
        sb.AppendLine("|---|---|---|---|---|");
        using var two = WorkerProcesses.Start(tool, $"localhost:{WorkerProcesses.FreePortPair()}", 2, 1);
        using var three = WorkerProcesses.Start(tool, $"localhost:{WorkerProcesses.FreePortPair()}", 3, 1);
        int blocks = (int)JsonNode.Parse(File.ReadAllText(Path.Combine(model, "config.json")))!["num_hidden_layers"]!;
        foreach (var (label, quantize) in methods)
        {
            Console.WriteLine(label);
            string manifest = Manifest(root, "agreement", model, data, samples, quantize, evaluate);
            var single = Quantize(tool, manifest, Path.Combine(root, "single"), null);
            var r2 = Quantize(tool, manifest, Path.Combine(root, "two"), null, "--cluster", two.Cluster, "--workers", "2");
            var r3 = Quantize(tool, manifest, Path.Combine(root, "three"), null, "--cluster", three.Cluster, "--workers", "3");
            double p1 = single.After!.Value, p2 = r2.After!.Value, p3 = r3.After!.Value;
            double worst = Math.Max(Math.Abs(p2 / p1 - 1), Math.Abs(p3 / p1 - 1));
            string bytes = (r2.Digest == single.Digest, r3.Digest == single.Digest) switch
            {
                (true, true) => "identical (2 and 3 workers)",
                (var a, var b) => $"2 workers {(a ? "identical" : $"{DifferingBytes(single, r2):N0} bytes differ")}, 3 workers {(b ? "identical" : $"{DifferingBytes(single, r3):N0} bytes differ")}",
            };
            var c = r3.Cluster!;
            sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {label} | {p1:F4} / {p2:F4} / {p3:F4} | {worst * 100:F4}% | {bytes} | {((long)c["statistics_bytes"]! + (long)c["weights_bytes"]!) / 1048576.0 / blocks:F0} MiB " +
                $"(statistics {(long)c["statistics_bytes"]! / 1048576.0 / blocks:F0} MiB in, solved linears {(long)c["weights_bytes"]! / 1048576.0 / blocks:F0} MiB out, solves on the workers {(long)c["solve_bytes"]! / 1048576.0 / blocks:F0} MiB) + states {(long)c["state_bytes"]! / 1048576.0 / blocks:F0} MiB |"));
        }
        Directory.Delete(root, true);
        return sb.ToString();
    }

    static long DifferingBytes(Run a, Run b)
    {
        var x = File.ReadAllBytes(Path.Combine(a.Folder, "out", "model.safetensors"));
        var y = File.ReadAllBytes(Path.Combine(b.Folder, "out", "model.safetensors"));
        long n = Math.Abs(x.LongLength - y.LongLength);
        for (long i = 0; i < Math.Min(x.LongLength, y.LongLength); i++) if (x[i] != y[i]) n++;
        return n;
    }
}
