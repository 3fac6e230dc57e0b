using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using DotQuant.Tests;
using DotQuant.Tool.Tests.Fuzzing;

namespace DotQuant.Bench;

/// <summary>bench/reliability.md: the figures behind issue 22's claims, each section rerunnable alone
/// (`dotquant-bench reliability SECTION`): GC stress (every pipeline, many times; and the same harness on
/// the tool before the Scalar ban, the control), chaos (kill -9 and SIGTERM at thirty seeded moments per
/// output format, then --resume), disk full (tmpfs of many sizes), cache damage, fuzzing executions and
/// crashers, and the memory plan against measured peaks.</summary>
static class Reliability
{
    public static readonly string[] SectionNames = ["gc-stress", "chaos", "disk-full", "cache", "fuzz", "memory", "memory-7b", "numerics"];

    public static void Run(string shared, string repo, string report, string[] args)
    {
        string tool = Option(args, "--tool") ?? Path.Combine(repo, "src", "Tool", "bin", "Release", "net10.0", "dotnet-quantize.dll");
        if (!File.Exists(tool)) throw new InvalidOperationException($"build the tool first: dotnet build -c Release src/Tool ({tool})");
        var sections = args.Where(SectionNames.Contains).ToList();
        if (sections.Count == 0) sections = [.. SectionNames];
        foreach (var s in sections)
        {
            Console.WriteLine($"== {s}");
            string marker = s + (Option(args, "--marker-suffix") ?? "");
            string body = s switch
            {
                "gc-stress" => GcStress(shared, tool, int.Parse(Option(args, "--repeat") ?? "10", CultureInfo.InvariantCulture), Option(args, "--label")),
                "chaos" => ChaosSection(shared, tool, int.Parse(Option(args, "--trials") ?? "30", CultureInfo.InvariantCulture)),
                "disk-full" => DiskFull(shared, tool),
                "cache" => Cache(shared, tool),
                "fuzz" => Fuzz(int.Parse(Option(args, "--iterations") ?? "2000", CultureInfo.InvariantCulture)),
                "memory" => Memory(shared, tool, Option(args, "--methods"), int.Parse(Option(args, "--repeat") ?? "1", CultureInfo.InvariantCulture)),
                "memory-7b" => Memory7B(shared, tool, (Option(args, "--policies") ?? "trim,keep,glibc").Split(',')),
                "numerics" => NumericsCost(shared, tool, int.Parse(Option(args, "--repeat") ?? "3", CultureInfo.InvariantCulture)),
                _ => throw new ArgumentException(s),
            };
            Sections.Splice(report, marker, body);
        }
    }

    static string? Option(string[] args, string name)
    {
        int i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
    }

    static string Header(string section, string extra = "") =>
        $"Produced by `dotnet build -c Release src/Tool && dotnet run -c Release --project bench/DotQuant.Bench -- reliability {section}{extra}` on " +
        $"{DateTime.UtcNow:yyyy-MM-dd} ({Environment.ProcessorCount} cores, {Machine.CpuModel()}).";

    static string F(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);

    /// <summary>Every GcStressRun case, <paramref name="repeat"/> times under stress, against one unstressed run.</summary>
    static string GcStress(string shared, string tool, int repeat, string? label)
    {
        using var work = new TempDir();
        var sb = new StringBuilder();
        sb.AppendLine($"## GC stress{(label is null ? "" : $": {label}")}");
        sb.AppendLine();
        sb.AppendLine(Header("gc-stress", $" --repeat {repeat}" + (label is null ? "" : $" --tool TOOL --label \"{label}\"")) +
            " Each row: one run of the tool without stress, then the same manifest under stress: a 64 KB gen0 budget " +
            "(`DOTNET_GCgen0size=0x10000`) and tests/GcStressHook loaded by `DOTNET_STARTUP_HOOKS` (a thread forcing collections and finalizers " +
            "without pause; no product code). stories260K, calibration 8 × 64, perplexity (4 windows) and piqa (10 items) before and after, read back from the output.");
        sb.AppendLine();
        sb.AppendLine("| pipeline | stressed runs | failed | bytes differ from unstressed | forced collections per run | rooted Scalars |");
        sb.AppendLine("|---|---|---|---|---|---|");
        int totalRuns = 0, totalFailed = 0, totalDiffer = 0;
        var failures = new List<string>();
        foreach (var c in GcStressRun.Cases)
        {
            string manifest = GcStressRun.Manifest(work.File("manifests"), shared, c);
            var plain = GcStressRun.Run(tool, manifest, work.File($"{c.Name}-plain"), stress: false);
            int failed = 0, differ = 0;
            var collections = new List<long>();
            int rooted = 0;
            for (int i = 0; i < repeat; i++)
            {
                string dir = work.File($"{c.Name}-{i}");
                var r = GcStressRun.Run(tool, manifest, dir, stress: true);
                if (r.ExitCode != 0)
                {
                    failed++;
                    failures.Add($"{c.Name} #{i}: exit {r.ExitCode}: {FirstLines(r.Stderr)}");
                }
                else if (!r.Files.SequenceEqual(plain.Files)) differ++;
                collections.Add(r.Collections);
                rooted = Math.Max(rooted, r.RootedScalars);
                Directory.Delete(dir, true);
            }
            totalRuns += repeat; totalFailed += failed; totalDiffer += differ;
            sb.AppendLine(F($"| {c.Name} | {repeat} | {failed} | {differ} | {collections.Average():N0} | {(rooted < 0 ? "—" : rooted.ToString(CultureInfo.InvariantCulture))} |"));
            Console.WriteLine($"{c.Name}: {failed} failed, {differ} differ");
        }
        sb.AppendLine(F($"| **all** | **{totalRuns}** | **{totalFailed}** | **{totalDiffer}** | | |"));
        sb.AppendLine();
        if (failures.Count > 0)
        {
            sb.AppendLine("Failures:");
            sb.AppendLine();
            foreach (var f in failures.Take(20)) sb.AppendLine($"- {f}");
            sb.AppendLine();
        }
        return sb.ToString();
    }

    static string FirstLines(string s) => string.Join(" / ", s.Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0).Take(2)).Replace("|", "\\|");

    static string ChaosSection(string shared, string tool, int trials)
    {
        using var work = new TempDir();
        var sb = new StringBuilder();
        sb.AppendLine("## Chaos: kill -9 and SIGTERM, then --resume");
        sb.AppendLine();
        sb.AppendLine(Header("chaos", $" --trials {trials}") + $" llama-tiny, GPTQ, calibration 8 × 64 (tests/Tool.Tests/Chaos.cs). Per output format, the undisturbed run is the reference; each trial " +
            "starts the same `run --resume` in a fresh folder, sends the signal at a moment drawn uniformly (seeded) over the reference's duration, checks that nothing " +
            "partial was published (a run stopped after its publication, while it wrote its report or exited, has published all of it; \"stopped after publication\" counts those), runs the command again to completion and compares every file with the reference; no working folder may remain.");
        sb.AppendLine();
        sb.AppendLine("| format | signal | trials | interrupted | stopped after publication | resumed from a block | byte-identical after resume | undisturbed s |");
        sb.AppendLine("|---|---|---|---|---|---|---|---|");
        var problems = new List<string>();
        int seed = 100;
        foreach (var format in new[] { "dotquant", "gptq", "gguf", "onnx" })
        {
            string manifest = Chaos.Manifest(work.File("manifests"), shared, format);
            var reference = Chaos.Reference(tool, manifest, work.File(format));
            foreach (var signal in new[] { "KILL", "TERM" })
            {
                var r = Chaos.Trials(tool, manifest, work.File(format), reference, trials, signal, seed++);
                sb.AppendLine(F($"| {format} | SIG{signal} | {r.Trials.Count} | {r.Interrupted} | {r.Trials.Count(t => t.ExitCode != 0 && t.Published)} | {r.Trials.Count(t => t.ResumedBlocks > 0)} | {r.Identical} / {r.Trials.Count} | {r.UndisturbedSeconds:F1} |"));
                problems.AddRange(r.Trials.Where(t => !t.Identical).Select(t => F($"{format} SIG{signal} at {t.At:F2} s: {t.Detail}")));
                Console.WriteLine($"{format} SIG{signal}: {r.Identical}/{r.Trials.Count}");
            }
        }
        sb.AppendLine();
        if (problems.Count > 0) { foreach (var p in problems) sb.AppendLine($"- {p}"); sb.AppendLine(); }
        return sb.ToString();
    }

    /// <summary>The same run on tmpfs file systems of many sizes, from too small to start to big enough.</summary>
    static string DiskFull(string shared, string tool)
    {
        using var work = new TempDir();
        string manifest = Chaos.Manifest(work.File("manifests"), shared, "dotquant");
        var reference = Chaos.Reference(tool, manifest, work.File("reference"));
        long full = Directory.GetFiles(reference.Folder, "*", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length);
        var sb = new StringBuilder();
        sb.AppendLine("## Disk full");
        sb.AppendLine();
        sb.AppendLine(Header("disk-full") + F($" llama-tiny, GPTQ W4 g32 (output {full / 1e6:F1} MB). Each row mounts a tmpfs of that size, puts a previous output of another manifest on it when it fits, ") +
            "runs `run --resume` there, then (after a failure) remounts it twice as big and runs `--resume` again. A failure must be DQ0155 naming the folder, leave no partial output and the previous output " +
            "byte-identical; the final output must equal the reference.");
        sb.AppendLine();
        sb.AppendLine("| tmpfs | outcome | DQ0155 names the folder | partial output left | previous output intact | after freeing space: resumed to the reference bytes |");
        sb.AppendLine("|---|---|---|---|---|---|");
        foreach (double fraction in new[] { 0.05, 0.25, 0.5, 0.8, 0.95, 1.1, 1.3, 2.0, 4.0 })
        {
            long size = Math.Max(64 << 10, (long)(full * fraction) + (256 << 10));
            using var fs = new SmallFilesystem(size);
            string output = fs.File("build");
            var r = Tool(tool, "run", manifest, "--output", output, "--resume");
            bool failedClean = r.ExitCode == 1 && r.Stderr.Contains("DQ0155") && r.Stderr.Contains(fs.Path);
            bool partial = r.ExitCode != 0 && Directory.Exists(Path.Combine(output, "out"));
            string outcome = r.ExitCode == 0 ? "completed" : r.Stderr.Contains("not enough space") ? "refused before work (DQ0155)" : r.Stderr.Contains("DQ0155") ? "stopped mid-run (DQ0155)" : $"exit {r.ExitCode}: {FirstLines(r.Stderr)}";
            string resumed = "—";
            if (r.ExitCode != 0)
            {
                Remount(fs.Path, size * 2 + (full * 3));
                var again = Tool(tool, "run", manifest, "--output", output, "--resume");
                resumed = again.ExitCode == 0 && Same(Path.Combine(output, "out"), reference.Folder) ? "yes" : $"NO ({FirstLines(again.Stderr)})";
            }
            else resumed = Same(Path.Combine(output, "out"), reference.Folder) ? "(completed: identical)" : "NO";
            sb.AppendLine(F($"| {size / 1e6:F1} MB | {outcome} | {(r.ExitCode == 0 ? "—" : failedClean ? "yes" : "NO")} | {(partial ? "YES" : "no")} | — | {resumed} |"));
            Console.WriteLine($"{size}: {outcome}");
        }
        sb.AppendLine();
        sb.AppendLine("The previous-output and cache cases, with the disk filled after block 1 from the run's own event, are tests (tests/Tool.Tests/DiskFullTests.cs), run in every CI run.");
        return sb.ToString();
    }

    static void Remount(string path, long size)
    {
        using var p = Process.Start("mount", ["-o", $"remount,size={size}", path])!;
        p.WaitForExit();
    }

    static bool Same(string a, string b)
    {
        if (!Directory.Exists(a) || !Directory.Exists(b)) return false;
        var fa = Directory.GetFiles(a).Select(Path.GetFileName).Order().ToList();
        var fb = Directory.GetFiles(b).Select(Path.GetFileName).Order().ToList();
        return fa.SequenceEqual(fb) && fa.All(f => File.ReadAllBytes(Path.Combine(a, f!)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(b, f!))));
    }

    static (int ExitCode, string Stdout, string Stderr) Tool(string tool, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(tool);
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var o = p.StandardOutput.ReadToEndAsync();
        string e = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, o.Result, e);
    }

    /// <summary>Every kind of damage to a cache entry, each detected, reported and rebuilt to the same bytes.</summary>
    static string Cache(string shared, string tool)
    {
        using var work = new TempDir();
        string manifest = Chaos.Manifest(work.File("manifests"), shared, "dotquant");
        string cache = work.File("cache");
        var first = Tool(tool, "run", manifest, "--cache-dir", cache, "--format", "json");
        if (first.ExitCode != 0) throw new InvalidOperationException(first.Stderr);
        string entry = JsonDocument.Parse(first.Stdout.Trim().Split('\n')[^1]).RootElement.GetProperty("output").GetString()!;
        string reference = work.File("reference");
        CopyFolder(entry, reference);
        var sw = Stopwatch.StartNew();
        var hit = Tool(tool, "run", manifest, "--cache-dir", cache, "--format", "json");
        double hitSeconds = sw.Elapsed.TotalSeconds;
        long entryBytes = Directory.GetFiles(entry).Sum(f => new FileInfo(f).Length);
        var damages = new (string Name, Action<string> Apply)[]
        {
            ("one bit flipped in the weights", e => Flip(Path.Combine(e, "model.safetensors"), 0.5)),
            ("one bit flipped in the header", e => Flip(Path.Combine(e, "model.safetensors"), 0.0001)),
            ("weights truncated by 1 byte", e => Truncate(Path.Combine(e, "model.safetensors"), 1)),
            ("weights truncated to half", e => Truncate(Path.Combine(e, "model.safetensors"), new FileInfo(Path.Combine(e, "model.safetensors")).Length / 2)),
            ("tokenizer.json deleted", e => File.Delete(Path.Combine(e, "tokenizer.json"))),
            ("dotquant.json edited", e => File.AppendAllText(Path.Combine(e, "dotquant.json"), " ")),
            ("a file added", e => File.WriteAllText(Path.Combine(e, "extra.bin"), "x")),
            ("the seal deleted", e => File.Delete(e + ".entry.json")),
            ("the seal corrupted", e => File.WriteAllText(e + ".entry.json", "{")),
            ("the whole entry emptied", e => { foreach (var f in Directory.GetFiles(e)) File.Delete(f); }),
        };
        var sb = new StringBuilder();
        sb.AppendLine("## Cache integrity");
        sb.AppendLine();
        sb.AppendLine(Header("cache") + F($" A cache entry of llama-tiny GPTQ W4 g32 ({entryBytes / 1e6:F1} MB) is damaged one way at a time; the next `run --cache-dir` must report DQ0161, not use it, and rebuild it to the same bytes. ") +
            F($"A verified hit (every file's SHA-256 read back against the seal) took {hitSeconds:F2} s for the whole command, start-up included."));
        sb.AppendLine();
        sb.AppendLine("| damage | reported (DQ0161) | used anyway | rebuilt to the same bytes |");
        sb.AppendLine("|---|---|---|---|");
        foreach (var (name, apply) in damages)
        {
            apply(entry);
            var r = Tool(tool, "run", manifest, "--cache-dir", cache, "--format", "json");
            bool reported = r.Stdout.Contains("DQ0161");
            bool used = r.Stdout.Contains("\"cached\":true");
            bool same = r.ExitCode == 0 && Same(entry, reference);
            sb.AppendLine($"| {name} | {(reported ? "yes" : "NO")} | {(used ? "YES" : "no")} | {(same ? "yes" : "NO")} |");
        }
        sb.AppendLine();
        sb.AppendLine("Four `dotnet build`s of the same manifest at once (tests/Tasks.Tests, `FourBuildsOfTheSameManifestAtOnceQuantizeOnceAndShareOneEntry`, every CI run): one quantizes, three wait on the entry's lock and take the verified hit.");
        return sb.ToString();
    }

    static void CopyFolder(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
    }

    static void Flip(string file, double at)
    {
        using var fs = new FileStream(file, FileMode.Open, FileAccess.ReadWrite);
        fs.Position = (long)(fs.Length * at);
        int b = fs.ReadByte();
        fs.Position--;
        fs.WriteByte((byte)(b ^ 0x10));
    }

    static void Truncate(string file, long by)
    {
        using var fs = new FileStream(file, FileMode.Open, FileAccess.ReadWrite);
        fs.SetLength(fs.Length - by);
    }

    static string Fuzz(int iterations)
    {
        var sb = new StringBuilder();
        sb.AppendLine("## Fuzzing the readers");
        sb.AppendLine();
        sb.AppendLine(Header("fuzz", $" --iterations {iterations}") + " Property-based (CsCheck 5.0.1, tests/Tool.Tests/Fuzzing): a valid seed file is edited (bit flips, " +
            "bytes, 64-bit fields set to extremes, truncation, deletion, insertion; JSON/YAML tokens replaced by hostile values) and handed to the tool's own command, " +
            F($"in process. The property: exit 0, or exit 1 with a DQ code (never DQ0900, an unhandled exception or a crash), within {ReaderFuzz.TimeBound.TotalSeconds:F0} s, ") +
            F($"and peak resident memory growing by at most {ReaderFuzz.MemoryBound >> 20} MB. Random seeds each run; a failure is shrunk and written out."));
        sb.AppendLine();
        sb.AppendLine("| target | executions | failures | seconds |");
        sb.AppendLine("|---|---|---|---|");
        long total = 0;
        foreach (var t in ReaderFuzz.Targets)
        {
            var sw = Stopwatch.StartNew();
            long executions = 0;
            string failure = "0";
            try
            {
                executions = ReaderFuzz.Check(t, iterations);
            }
            catch (Exception e)
            {
                executions = iterations;
                failure = "1: " + FirstLines(e.Message);
            }
            total += executions;
            sb.AppendLine(F($"| {t.Name} | {executions:N0} | {failure} | {sw.Elapsed.TotalSeconds:F0} |"));
            Console.WriteLine($"{t.Name}: {executions} executions, {failure}");
        }
        sb.AppendLine(F($"| **all** | **{total:N0}** | | |"));
        sb.AppendLine();
        string crashers = Path.Combine(SharedPaths.RepoRoot, "tests", "Tool.Tests", "Fuzzing", "Crashers");
        var kept = Directory.GetFiles(crashers, "*.bin").Select(f => Path.GetFileName(f)).Order().ToList();
        sb.AppendLine($"Crashers found since the fuzzer was written, each fixed and kept as a regression input replayed by every CI run ({kept.Count} files in tests/Tool.Tests/Fuzzing/Crashers): see the list in docs/reliability.md.");
        return sb.ToString();
    }

    /// <summary>What portable numerics cost: the same run with the AVX2 kernels and MKL's reproducibility
    /// branch (the default) and with libtorch's own choices (DOTQUANT_NUMERICS=native), alternated so that
    /// the machine's drift hits both.</summary>
    static string NumericsCost(string shared, string tool, int repeat)
    {
        string root = Path.Combine(Path.GetTempPath(), "dotquant-bench-reliability");
        string model = Path.Combine(root, "tinyllama-2");
        if (!File.Exists(Path.Combine(model, "config.json"))) BigModel.Write(model, AuthorsGptq.TinyLlama.Shape, 2, shared);
        using var work = new TempDir();
        File.WriteAllText(work.File("quant.yaml"),
            $"version: 1\nmodel: {model}\ncalibration:\n  data: {Path.Combine(shared, "data", "wikitext2-tokenized", "valid.tokens")}\n  samples: 32\n  sequence_length: 512\n" +
            $"quantize:\n  method: gptq\n  bits: 4\n  group_size: 128\noutput:\n  name: out\nevaluate:\n  perplexity: {{ data: {Path.Combine(shared, "data", "wikitext2", "wiki.test.gptq-joined.txt")}, sequence_length: 512, max_sequences: 16 }}\n");
        var times = new Dictionary<string, List<JsonElement>> { ["portable"] = [], ["native"] = [] };
        for (int i = 0; i < repeat; i++)
            foreach (var mode in new[] { "portable", "native" })
            {
                var env = mode == "native" ? new[] { ("DOTQUANT_NUMERICS", "native"), ("ATEN_CPU_CAPABILITY", ""), ("MKL_CBWR", "") } : [];
                var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
                foreach (var a in new[] { tool, "run", work.File("quant.yaml"), "--output", work.File(mode), "--format", "json" }) psi.ArgumentList.Add(a);
                psi.Environment.Remove("ATEN_CPU_CAPABILITY");
                psi.Environment.Remove("MKL_CBWR");
                foreach (var (k, v) in env) if (v.Length > 0) psi.Environment[k] = v;
                using var p = Process.Start(psi)!;
                string stdout = p.StandardOutput.ReadToEnd();
                p.StandardError.ReadToEnd();
                p.WaitForExit();
                times[mode].Add(JsonDocument.Parse(stdout.Trim().Split('\n')[^1]).RootElement.Clone());
                Console.WriteLine($"{mode} #{i}: {times[mode][^1].GetProperty("seconds").GetDouble():F1} s");
            }
        double Median(string mode, Func<JsonElement, double> f) => times[mode].Select(f).Order().ElementAt(repeat / 2);
        double Phase(JsonElement e, string name) => e.GetProperty("phases").TryGetProperty(name, out var v) ? v.GetDouble() : 0;
        var sb = new StringBuilder();
        sb.AppendLine("## What portable numerics cost");
        sb.AppendLine();
        sb.AppendLine(Header("numerics", $" --repeat {repeat}") + " TinyLlama-shaped synthetic model (2 layers, hidden 2048, intermediate 5632, vocab 32000, bf16), GPTQ W4 g128 on 32 × 512 tokens, " +
            "perplexity over 16 windows of 512 before and after; `run --format json`, alternating portable (the default: `ATEN_CPU_CAPABILITY=avx2`, `MKL_CBWR=AVX2`) and " +
            "native (`DOTQUANT_NUMERICS=native`: libtorch's own kernels), median of the runs; phases from the run's own clock.");
        sb.AppendLine();
        sb.AppendLine("| phase | portable s | native s | portable / native |");
        sb.AppendLine("|---|---|---|---|");
        foreach (var phase in new[] { "total", "evaluation", "capture", "xtx", "factorization", "solve", "advance" })
        {
            Func<JsonElement, double> f = phase == "total" ? e => e.GetProperty("seconds").GetDouble() : e => Phase(e, phase);
            double a = Median("portable", f), b = Median("native", f);
            sb.AppendLine(F($"| {phase} | {a:F1} | {b:F1} | {(b > 0 ? a / b : 0):F2} |"));
        }
        sb.AppendLine();
        sb.AppendLine($"This CPU is an {Machine.CpuModel()}: MKL's own choice on AMD is its AVX2 path already, so the difference here is ATen's AVX2 kernels against its AVX-512 ones " +
            "and MKL's reproducibility branch; on an Intel CPU with AVX-512, MKL's GEMM would also lose its AVX-512 kernels in portable mode (`DOTQUANT_NUMERICS=native` trades the portable bytes for them).");
        return sb.ToString();
    }

    /// <summary>The acceptance run: a Llama-2-7B-shaped checkpoint of 8 blocks (bf16) quantized with GPTQ W4
    /// g128 on 8 × 512 tokens inside a 6 GiB cgroup, once per allocator policy (DOTQUANT_MALLOC).</summary>
    static string Memory7B(string shared, string tool, string[] policies)
    {
        const long GiB = 1L << 30;
        string root = Path.Combine(Path.GetTempPath(), "dotquant-bench-reliability");
        string model = Path.Combine(root, "llama7b-8");
        if (!File.Exists(Path.Combine(model, "config.json"))) BigModel.Write(model, BigModel.Llama7B, 8, shared);
        var sb = new StringBuilder();
        sb.AppendLine("## Memory plan: the 7B-shaped run in 6 GiB, per allocator policy");
        sb.AppendLine();
        sb.AppendLine(Header("memory-7b") + " Checkpoint: synthetic Llama-2-7B shape, 8 blocks, bf16 (3.6 GB); `dotnet-quantize run --format json --max-memory 6GiB` of GPTQ W4 g128 " +
            "on 8 × 512 tokens of `valid.tokens`, in a fresh process inside a cgroup v1 memory controller with a 6 GiB hard limit (swap off). Peak RssAnon (anonymous memory: tensors, streams, " +
            "Hessians, the allocator's retained heap) is sampled every 20 ms from /proc/PID/status; peak RSS adds the file pages the process maps (libtorch's code, the checkpoint); " +
            "the cgroup's usage counts the page cache too, which fills it to the limit on any run that streams a checkpoint larger than the room left — those pages are clean and " +
            "dropped under pressure, so \"limit hit by anonymous memory\" is whether peak RSS (anonymous plus mapped) came within 10% of the limit. " +
            "`DOTQUANT_MALLOC`: trim (the default: glibc keeps freed blocks, the heap is trimmed between groups and blocks, tensors larger than one batch's hidden states are mapped " +
            "in forward passes and the solves' n² matrices always), keep (the policy before: freed blocks kept, never trimmed), glibc (glibc's own thresholds).");
        sb.AppendLine();
        sb.AppendLine("| policy | exit | minutes | plan | peak RssAnon | RssAnon / plan | peak RSS | limit hit by anonymous memory | cgroup failcnt |");
        sb.AppendLine("|---|---|---|---|---|---|---|---|---|");
        foreach (var policy in policies)
        {
            string work = Path.Combine(root, $"run-{policy}");
            if (Directory.Exists(work)) Directory.Delete(work, true);
            Directory.CreateDirectory(work);
            File.WriteAllText(Path.Combine(work, "quant.yaml"),
                $"version: 1\nmodel: {model}\ncalibration:\n  data: {Path.Combine(shared, "data", "wikitext2-tokenized", "valid.tokens")}\n  samples: 8\n  sequence_length: 512\n" +
                "quantize:\n  method: gptq\n  bits: 4\n  group_size: 128\noutput:\n  name: out\n  shard_size: 2GB\n");
            Environment.SetEnvironmentVariable("DOTQUANT_MALLOC", policy);
            var r = Limited.Run(6 * GiB, work, "dotnet", [tool, "run", "quant.yaml", "--format", "json", "--max-memory", (6 * GiB).ToString(CultureInfo.InvariantCulture)]);
            Environment.SetEnvironmentVariable("DOTQUANT_MALLOC", null);
            long? plan = r.Stdout.Split('\n').Where(l => l.Contains("\"event\":\"memory\"")).Select(l => (long?)JsonDocument.Parse(l).RootElement.GetProperty("plan").GetProperty("peak_bytes").GetInt64()).FirstOrDefault();
            sb.AppendLine(F($"| {policy} | {r.ExitCode} | {r.Seconds / 60:F1} | {(plan is long p ? p / (double)GiB : 0):F2} GiB | {r.PeakRssAnon / (double)GiB:F2} GiB | {(plan is long q ? r.PeakRssAnon / (double)q : 0):F2} | {r.PeakRss / (double)GiB:F2} GiB | {(r.PeakRss > 0.9 * 6 * GiB || r.Killed ? "YES" : "no")} | {r.Failcnt?.ToString("N0", CultureInfo.InvariantCulture) ?? "—"} |"));
            Console.WriteLine($"{policy}: exit {r.ExitCode}, {r.Seconds:F0} s, peak anon {r.PeakRssAnon / (double)GiB:F2}");
            Directory.Delete(work, true);
        }
        return sb.ToString();
    }

    /// <summary>The memory plan against the measured peak of anonymous memory, per method on llama-tiny.</summary>
    /// <param name="only">Comma-separated method names to run (all when null).</param>
    /// <param name="repeat">Runs per method: the row reports the largest peak and the range.</param>
    static string Memory(string shared, string tool, string? only, int repeat)
    {
        using var work = new TempDir();
        var methods = new (string Name, string Quantize)[]
        {
            ("RTN W4 g128", "  method: rtn\n  bits: 4\n  group_size: 128\n"),
            ("GPTQ W4 g128", "  method: gptq\n  bits: 4\n  group_size: 128\n"),
            ("GPTQ W4 g128 act order", "  method: gptq\n  bits: 4\n  group_size: 128\n  act_order: true\n"),
            ("GPTAQ W3 g128", "  method: gptaq\n  bits: 3\n  group_size: 128\n"),
            ("GPTAQ + ResComp W2 g128", "  method: gptaq\n  bits: 2\n  group_size: 128\n  compensation_aware: true\n"),
            ("OAC + GPTQ W2 g128", "  method: gptq\n  bits: 2\n  group_size: 128\n  hessian: output_adaptive\n"),
            ("SpQR W2", "  method: spqr\n"),
            ("OAC + SpQR W2", "  method: spqr\n  hessian: output_adaptive\n"),
            ("BiLLM", "  method: billm\n"),
            ("QuaRot + GPTQ W3 g128", "  method: gptq\n  bits: 3\n  group_size: 128\n  rotate: hadamard\n"),
        };
        if (only is not null)
        {
            var names = only.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).ToHashSet(StringComparer.OrdinalIgnoreCase);
            methods = methods.Where(m => names.Contains(m.Name)).ToArray();
        }
        string extra = (only is null ? "" : $" --methods \"{only}\"") + (repeat > 1 ? $" --repeat {repeat}" : "");
        var sb = new StringBuilder();
        sb.AppendLine(only is null ? "## Memory plan against measured peaks (llama-tiny, every method)" : "## Memory plan against measured peaks (llama-tiny, again)");
        sb.AppendLine();
        sb.AppendLine(Header("memory", extra) + " Each row: `dotnet-quantize run --format json` in a fresh process, calibration 128 × 512 tokens, perplexity over 8 windows of 512 " +
            "before and after; peak anonymous memory (RssAnon) sampled every 20 ms" + (repeat > 1 ? F($", the largest of {repeat} runs (the range beside it)") : "") +
            "; \"plan\" is the peak the run printed before any work. Acceptance: within 10% of the plan.");
        sb.AppendLine();
        sb.AppendLine("| method | plan | measured peak RssAnon | measured / plan | seconds |");
        sb.AppendLine("|---|---|---|---|---|");
        foreach (var (name, quantize) in methods)
        {
            string dir = work.File(name.Replace(' ', '-').Replace('+', 'p'));
            Directory.CreateDirectory(dir);
            File.WriteAllText(Path.Combine(dir, "quant.yaml"),
                $"version: 1\nmodel: {Path.Combine(shared, "models", "llama-tiny")}\ncalibration:\n  data: {Path.Combine(shared, "data", "wikitext2-tokenized", "valid.tokens")}\n  samples: 128\n  sequence_length: 512\n" +
                $"quantize:\n{quantize}output:\n  name: out\nevaluate:\n  perplexity: {{ data: {Path.Combine(shared, "data", "wikitext2", "wiki.test.gptq-joined.txt")}, sequence_length: 512, max_sequences: 8 }}\n");
            var peaks = new List<long>();
            long? plan = null;
            double seconds = 0;
            for (int k = 0; k < repeat; k++)
            {
                var r = Limited.Run(1L << 40, dir, "dotnet", [tool, "run", "quant.yaml", "--format", "json"]);
                plan ??= r.Stdout.Split('\n').Where(l => l.Contains("\"event\":\"memory\"")).Select(l => (long?)JsonDocument.Parse(l).RootElement.GetProperty("plan").GetProperty("peak_bytes").GetInt64()).FirstOrDefault();
                peaks.Add(r.PeakRssAnon);
                seconds = Math.Max(seconds, r.Seconds);
                Console.WriteLine($"{name}: plan {plan}, peak {r.PeakRssAnon}, exit {r.ExitCode}");
                foreach (var produced in new[] { "out", "out-report" })
                    if (Directory.Exists(Path.Combine(dir, produced))) Directory.Delete(Path.Combine(dir, produced), true);
            }
            long peak = peaks.Max();
            string ratio = plan is long p ? F($"{peak / (double)p:F2}") : "—";
            string range = repeat > 1 ? F($" ({peaks.Min() / 1048576.0:F0}–{peak / 1048576.0:F0})") : "";
            sb.AppendLine(F($"| {name} | {(plan is long q ? $"{q / 1048576.0:F0} MiB" : "—")} | {peak / 1048576.0:F0} MiB{range} | {ratio} | {seconds:F1} |"));
        }
        return sb.ToString();
    }
}
