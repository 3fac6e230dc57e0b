using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using DotQuant.Cluster;
using DotQuant.Engine.Calibration;
using DotQuant.Engine.Formats;
using DotQuant.Engine.IO;
using DotQuant.Engine.Manifest;
using DotQuant.Tool.Caching;
using DotQuant.Tool.Packaging;

namespace DotQuant.Tool.Commands;

/// <summary><c>dotnet-quantize run quant.yaml</c>: quantize the model the manifest names.</summary>
public static class RunCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr, bool interactive)
    {
        var manifest = new Argument<string>("MANIFEST") { Description = "quant.yaml" };
        var output = new Option<string?>("--output") { Description = "folder that receives the output folder (default: the manifest's folder)" };
        var cacheDir = new Option<string?>("--cache-dir") { Description = "content-addressed cache: reuse CACHE/<fingerprint>/<name> if present, else write it there" };
        var requireCache = new Option<bool>("--require-cache") { Description = "with --cache-dir: a missing entry is an error instead of a computation (CI)" };
        var resume = new Option<bool>("--resume") { Description = "continue an interrupted run of the same inputs after its last completed block (same bytes as an uninterrupted run)" };
        var maxMemory = new Option<string?>("--max-memory") { Description = "refuse (DQ0154) when the memory plan predicts more than this (e.g. 6G, 24GiB, 4000M; default: the memory available)" };
        var exclusive = new Option<bool>("--exclusive") { Description = "one quantization at a time on this machine: wait while another --exclusive run works (what the MSBuild integration asks for)" };
        var cluster = new Option<string?>("--cluster") { Description = "spread the calibration over the workers of this cluster: localhost, localhost:PORT or redis://HOST:PORT (see `worker`)" };
        var workers = new Option<int?>("--workers") { Description = "with --cluster: wait for this many workers and split the calibration into as many shards (default: those that joined)" };
        var tls = new Option<string?>("--tls-certificate") { Description = "with --cluster: the cluster's PKCS#12 certificate (see `worker --tls-certificate`)" };
        var tlsPassword = new Option<string?>("--tls-password") { Description = "the certificate file's password (default: DOTQUANT_TLS_PASSWORD)" };
        var clusterTimeout = new Option<double>("--cluster-timeout") { Description = "with --cluster: seconds to wait for the workers (DQ0185 after that)", DefaultValueFactory = _ => 60 };
        var format = OutputFormat.Create();
        var cmd = new Command("run", "Quantize a model as a quant.yaml manifest describes") { manifest, output, cacheDir, requireCache, resume, maxMemory, exclusive, cluster, workers, clusterTimeout, tls, tlsPassword, format };
        cmd.SetAction((parse, ct) =>
        {
            var m = ModelSource.Resolve(ManifestParser.Load(parse.GetValue(manifest)!), parse.GetValue(cacheDir), ct);
            string outDir = Path.GetFullPath(parse.GetValue(output) ?? Path.GetDirectoryName(m.Path)!);
            bool json = parse.GetValue(format) == "json";
            string verbosity = parse.GetValue(Cli.Verbosity) ?? "n";
            bool quiet = verbosity is "q" or "quiet";
            var progress = new Progress(stdout, json, quiet, interactive && !json);
            long? limit = parse.GetValue(maxMemory) is { } text ? ByteSize.Parse(text, "--max-memory") : null;

            // The workers are found first: without them nothing is computed or written (DQ0185).
            var security = parse.GetValue(cluster) is null ? null
                : ClusterSecurity.Load(parse.GetValue(tls), parse.GetValue(tlsPassword) ?? Environment.GetEnvironmentVariable("DOTQUANT_TLS_PASSWORD"));
            using var members = Connect(parse, cluster, workers, clusterTimeout, security, progress, ct);
            int shards = members?.Workers ?? 1;

            FileDigests? digests = null;
            CacheEntry? entry = null;
            FileLock? entryLock = null;
            if (parse.GetValue(cacheDir) is { } cache)
            {
                digests = new FileDigests(Path.GetFullPath(cache));
                string fingerprint = QuantizeJob.Fingerprint(m, digests, shards);
                digests.Save();
                outDir = Path.Combine(Path.GetFullPath(cache), CacheKey(fingerprint));
                entry = new CacheEntry(outDir, m.Output.Name);
                // A good entry is used at once; a damaged one is looked at again under the entry's lock
                // (another build may be replacing it) before it is moved aside.
                if (entry.Verify(out _) == CacheEntry.State.Good) return Task.FromResult(CacheHit());
                if (parse.GetValue(requireCache) && !Directory.Exists(entry.Folder))
                    throw new DotQuant.Runtime.DotQuantException(DotQuant.Runtime.ErrorCodes.CacheMiss,
                        $"no cache entry for {m.Output.Name} ({fingerprint}) in {cache}, and the cache is required (DotQuantRequireCache); build once without it to fill the cache", m.Path);
                // One writer per entry: concurrent builds of the same manifest wait here and take the hit.
                entryLock = FileLock.Acquire(entry.LockFile, m.Path,
                    holder => $"another build is quantizing the same inputs into the cache ({holder}); waiting to use its result",
                    text => progress.Report(new InfoEvent("waiting", text)), ct);
                switch (entry.Verify(out string problem))
                {
                    case CacheEntry.State.Good:
                        entryLock.Dispose();
                        return Task.FromResult(CacheHit());
                    case CacheEntry.State.Damaged:
                        progress.Report(new WarningEvent($"{DotQuant.Runtime.ErrorCodes.CacheDamaged}: the cache entry {entry.Folder} is damaged ({problem}); " +
                                                         "it was moved aside and is computed again"));
                        entry.MoveAside();
                        break;
                }
                if (parse.GetValue(requireCache))
                    throw new DotQuant.Runtime.DotQuantException(DotQuant.Runtime.ErrorCodes.CacheMiss,
                        $"no usable cache entry for {m.Output.Name} ({fingerprint}) in {cache}, and the cache is required (DotQuantRequireCache); build once without it to fill the cache", m.Path);
            }
            using var heldEntry = entryLock;

            // Locks are taken entry first, machine second (never the other way round: no deadlock).
            using var machineLock = parse.GetValue(exclusive) ? MachineLock.Acquire(m.Path, text => progress.Report(new InfoEvent("waiting", text)), ct) : null;

            var options = new RunOptions
            {
                ContentAddressed = digests is not null, Resume = parse.GetValue(resume), MaxMemory = limit, Digests = digests,
                BeforePublish = entry is null ? null : entry.Seal, Cluster = members,
            };
            var result = QuantizeJob.Run(m, outDir, progress.Report, ct, options);
            if (members is not null)
            {
                foreach (var t in members.Takeovers) progress.Report(new WarningEvent($"{DotQuant.Runtime.ErrorCodes.ClusterWorkerLost}: {t}"));
                progress.Report(ClusterReport(members, result));
            }
            if (m.Evaluate is not null)
            {
                string report = DotQuant.Tool.Reports.RunReport.Write(m, result, PeakRssBytes());
                progress.Report(new InfoEvent("report", report));
            }
            progress.Finish(result, manifest: m);
            if (!result.GatePassed) GateError(stderr, m, result.Before!.Perplexity, result.After!.Perplexity);
            return Task.FromResult(result.GatePassed ? ExitCodes.Ok : ExitCodes.GateFailed);

            int CacheHit()
            {
                string folder = entry!.Folder;
                progress.Report(new InfoEvent("cache", $"cache hit: {folder} (every file verified against its seal)"));
                // The entry keeps the measurements; the gate is the manifest's as it is now.
                var recorded = PackageInfo.RecordedPerplexity(folder);
                bool passed = m.Evaluate?.Gate is not { } gate || recorded is not { } p || gate.Judge(p.Before, p.After);
                progress.Finish(new JobResult(folder, 0, null, null, passed, []), cached: true, recorded: recorded, manifest: m);
                if (!passed) GateError(stderr, m, recorded!.Value.Before, recorded.Value.After);
                return passed ? ExitCodes.Ok : ExitCodes.GateFailed;
            }
        });
        return cmd;
    }

    static OrleansCluster? Connect(ParseResult parse, Option<string?> cluster, Option<int?> workers, Option<double> timeout, ClusterSecurity? tls, Progress progress, CancellationToken ct)
    {
        int? wanted = parse.GetValue(workers);
        if (parse.GetValue(cluster) is not { } text)
        {
            if (wanted is not null)
                throw new DotQuant.Runtime.DotQuantException(DotQuant.Runtime.ErrorCodes.Usage, "--workers needs --cluster");
            return null;
        }
        if (wanted is < 1) throw new DotQuant.Runtime.DotQuantException(DotQuant.Runtime.ErrorCodes.Usage, "--workers must be at least 1");
        double seconds = parse.GetValue(timeout);
        if (seconds <= 0) throw new DotQuant.Runtime.DotQuantException(DotQuant.Runtime.ErrorCodes.Usage, "--cluster-timeout must be positive");
        var address = ClusterAddress.Parse(text);
        var members = OrleansCluster.Connect(address, wanted, TimeSpan.FromSeconds(seconds), tls, line => progress.Report(new InfoEvent("cluster", line)), ct);
        foreach (var w in members.Members)
            progress.Report(new InfoEvent("cluster", $"worker {w.Silo} on {w.Machine} (pid {w.ProcessId}, DotQuant {w.EngineVersion}, {w.Numerics})"));
        return members;
    }

    /// <summary>Which workers took part, their tokens/s, the bytes exchanged and the time spent waiting on the slowest.</summary>
    static ClusterReportEvent ClusterReport(OrleansCluster members, JobResult result)
    {
        var t = members.Traffic;
        int blocks = Math.Max(1, result.Layers.Select(l => l.Block).Distinct().Count() - result.ResumedBlocks);
        // Tokens through the blocks per second of statistics work (each group's forward counts once per block).
        var rates = t.ComputeSeconds.OrderBy(kv => kv.Key)
            .Select(kv => $"shard {kv.Key} on {members.WorkerOf(kv.Key)}: {t.Tokens[kv.Key]:N0} tokens, {kv.Value:F1} s of statistics ({(kv.Value > 0 ? t.Tokens[kv.Key] * (double)blocks / kv.Value : 0):N0} tokens/s)");
        var figures = new JsonObject
        {
            ["workers"] = members.Workers, ["blocks"] = blocks,
            ["shards"] = new JsonArray(t.ComputeSeconds.OrderBy(kv => kv.Key).Select(kv => (JsonNode)new JsonObject
            {
                ["shard"] = kv.Key, ["worker"] = members.WorkerOf(kv.Key), ["tokens"] = t.Tokens[kv.Key], ["statistics_seconds"] = Math.Round(kv.Value, 3),
            }).ToArray()),
            ["statistics_bytes"] = t.BytesReceived, ["statistics_transfer_seconds"] = Math.Round(t.ReceiveSeconds, 3),
            ["weights_bytes"] = t.BytesSent, ["weights_transfer_seconds"] = Math.Round(t.SendSeconds, 3),
            ["solve_bytes"] = t.SolveBytes, ["solve_seconds"] = Math.Round(t.SolveSeconds, 3),
            ["state_bytes"] = t.StateBytes, ["takeovers"] = members.Takeovers.Count,
            ["slowest_statistics_seconds"] = Math.Round(t.SlowestSeconds, 3), ["waiting_on_slowest_seconds"] = Math.Round(t.WaitingOnSlowest, 3),
        };
        return new ClusterReportEvent(figures,
            $"{members.Workers} workers: {string.Join("; ", rates)}; exchanged {ByteSize.Format(t.BytesReceived + t.BytesSent)} " +
            $"({ByteSize.Format((t.BytesReceived + t.BytesSent) / blocks)} per block: statistics {ByteSize.Format(t.BytesReceived)} in {t.ReceiveSeconds:F1} s ({Rate(t.BytesReceived, t.ReceiveSeconds)}), " +
            $"solved linears {ByteSize.Format(t.BytesSent)} out in {t.SendSeconds:F1} s ({Rate(t.BytesSent, t.SendSeconds)})), " +
            $"solves on the workers {t.SolveSeconds:F1} s ({ByteSize.Format(t.SolveBytes)} of statistics out and solved linears back), " +
            $"shard states {ByteSize.Format(t.StateBytes)}; {members.Takeovers.Count} shard{(members.Takeovers.Count == 1 ? "" : "s")} taken over; " +
            $"waited {t.WaitingOnSlowest:F1} s on the slowest worker ({t.SlowestSeconds:F1} s of statistics on the slowest shards)");
    }

    static string Rate(long bytes, double seconds) => seconds > 0 ? $"{ByteSize.Format((long)(bytes / seconds))}/s" : "-";

    /// <summary>Peak resident memory of this process (VmHWM on Linux).</summary>
    static long PeakRssBytes()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                    return long.Parse(line[6..].Trim().Split(' ')[0]) * 1024;
        }
        catch (IOException)
        {
        }
        return System.Diagnostics.Process.GetCurrentProcess().PeakWorkingSet64;
    }

    static void GateError(TextWriter stderr, QuantManifest m, double before, double after)
    {
        var gate = m.Evaluate!.Gate!;
        stderr.WriteLine(new DotQuant.Runtime.DotQuantException(DotQuant.Runtime.ErrorCodes.QualityGate,
            $"quality gate failed: perplexity {before:F4} (float) -> {after:F4} (quantized) exceeds the allowed {gate.Limit} ({gate.Allowed(before):F4})", m.Path).Format());
    }

    /// <summary>The cache folder name of a fingerprint ("sha256:HEX" → first 32 hex digits).</summary>
    public static string CacheKey(string fingerprint) => fingerprint[(fingerprint.IndexOf(':') + 1)..][..32];

    /// <summary>Plain lines (or a live line on a terminal) in text mode; one JSON object per
    /// event with --format json, then a summary object last.</summary>
    sealed class Progress(TextWriter stdout, bool json, bool quiet, bool live)
    {
        readonly DateTime _start = DateTime.UtcNow;
        bool _lineOpen;

        public void Report(RunEvent e)
        {
            if (json)
            {
                var o = new JsonObject { ["event"] = e.Kind, ["message"] = e.Message };
                switch (e)
                {
                    case LayerEvent { Layer: var l } le:
                        o["layer"] = l.Name;
                        o["index"] = le.Done;
                        o["total"] = le.Total;
                        o["bits"] = l.Bits;
                        if (double.IsFinite(l.Loss)) o["loss"] = l.Loss;
                        if (double.IsFinite(l.RtnLoss)) o["rtn_loss"] = l.RtnLoss;
                        o["kind"] = l.Kind;
                        if (double.IsFinite(l.PaperBits)) o["paper_bits"] = Math.Round(l.PaperBits, 6);
                        if (double.IsFinite(l.StoredBits)) o["stored_bits"] = Math.Round(l.StoredBits, 6);
                        if (l.Kind == "spqr") o["outliers"] = l.Outliers;
                        if (l.Kind == "billm") o["salient_columns"] = l.SalientColumns;
                        o["seconds"] = Math.Round(l.Seconds, 4);
                        o["eta_seconds"] = Math.Round(Eta(le), 1);
                        break;
                    case PerplexityEvent p:
                        o["perplexity"] = p.Result.Perplexity;
                        break;
                    case BlockEvent b:
                        o["block"] = b.Block;
                        o["seconds"] = Math.Round(b.Seconds, 3);
                        break;
                    case ProgressEvent pr:
                        o["block"] = pr.Block;
                        o["seconds"] = Math.Round(pr.Seconds, 3);
                        break;
                    case MemoryEvent mem:
                        o["plan"] = mem.Plan.ToJson();
                        break;
                    case ClusterReportEvent c:
                        o["cluster"] = c.Figures.DeepClone();
                        break;
                }
                OutputFormat.WriteJson(stdout, o);
                return;
            }
            if (quiet && e is not WarningEvent) return;
            // Block timings are for JSON consumers (and the live line); the layer lines carry progress.
            if (e is BlockEvent && !live) return;
            string text = e switch
            {
                LayerEvent { Layer: var layer } le => $"[{le.Done,3}/{le.Total}] {layer.Name,-40} {(double.IsFinite(layer.Loss) ? $"loss {Sci(layer.Loss)}" + (double.IsFinite(layer.RtnLoss) ? $" (RTN {Sci(layer.RtnLoss)})" : "") : ""),-30}{Extra(layer)} {layer.Seconds,6:F2} s  ETA {Eta(le),5:F0} s",
                WarningEvent w => $"warning: {w.Message}",
                PerplexityEvent p => $"perplexity {p.Message}",
                _ => e.Message,
            };
            if (live && e is LayerEvent or BlockEvent)
            {
                stdout.Write("\r" + text.PadRight(Console.IsOutputRedirected ? 0 : Math.Max(0, Console.WindowWidth - 1)));
                _lineOpen = true;
            }
            else
            {
                if (_lineOpen) { stdout.WriteLine(); _lineOpen = false; }
                stdout.WriteLine(text);
            }
        }

        static string Sci(double v) => v.ToString("0.00e+0", CultureInfo.InvariantCulture);

        double Eta(LayerEvent e) =>
            e.Done == 0 ? 0 : (DateTime.UtcNow - _start).TotalSeconds / e.Done * (e.Total - e.Done);

        public void Finish(JobResult r, bool cached = false, (double Before, double After)? recorded = null, QuantManifest? manifest = null)
        {
            (double Before, double After)? ppl = r.Before is not null && r.After is not null ? (r.Before.Perplexity, r.After.Perplexity) : null;
            if (recorded is { } rec) ppl = rec;
            if (_lineOpen) { stdout.WriteLine(); _lineOpen = false; }
            if (json)
            {
                var o = new JsonObject
                {
                    ["event"] = "summary",
                    ["output"] = r.Output,
                    ["seconds"] = Math.Round(r.Seconds, 3),
                    ["layers"] = r.Layers.Count(l => l.Quantized),
                    ["cached"] = cached,
                    ["phases"] = new JsonObject(r.Phases.Select(p => KeyValuePair.Create<string, JsonNode?>(p.Key, Math.Round(p.Value, 3)))),
                };
                if (manifest is not null)
                {
                    // What the build integration needs: where the files are, how to ship them,
                    // and which inputs to watch for the next incremental build.
                    o["name"] = manifest.Output.Name;
                    o["embed"] = manifest.Output.Embed;
                    o["inputs"] = new JsonArray(QuantizeJob.InputFiles(manifest).Select(f => (JsonNode)f).ToArray());
                }
                if (ppl is { } p)
                {
                    o["perplexity"] = new JsonObject { ["before"] = p.Before, ["after"] = p.After };
                    o["gate"] = r.GatePassed ? "passed" : "failed";
                }
                OutputFormat.WriteJson(stdout, o);
                return;
            }
            var mb = ModelBits.Of(r.Layers);
            string bits = mb.Weights > 0 ? $", {mb.Paper:F3} bits/weight as the method counts, {mb.Stored:F3} stored" : "";
            stdout.WriteLine(cached ? $"up to date: {r.Output}" : $"wrote {r.Output} ({r.Layers.Count(l => l.Quantized)} linears quantized{bits}) in {r.Seconds:F1} s");
            if (ppl is { } q)
                stdout.WriteLine($"perplexity {q.Before:F4} -> {q.After:F4}{(r.GatePassed ? "" : "  QUALITY GATE FAILED")}");
            if (!cached && r.Phases.Count > 0)
                stdout.WriteLine("time: " + string.Join(", ", r.Phases.Where(p => p.Value >= 0.05).OrderByDescending(p => p.Value).Select(p => $"{p.Key} {p.Value:F1} s")));
        }
    }

    /// <summary>The per-layer extras of the low-bit methods: bits, outliers, salient columns.</summary>
    static string Extra(DotQuant.Engine.Calibration.LayerReport l) => l.Kind switch
    {
        "spqr" => $" {l.PaperBits:F2} b, {l.Outliers} outliers",
        "billm" => $" {l.PaperBits:F2} b, {l.SalientColumns} salient",
        _ => "",
    };
}

/// <summary>The cluster's report at the end of a distributed run, with its figures for JSON consumers.</summary>
sealed record ClusterReportEvent(JsonObject Figures, string Text) : RunEvent("cluster", Text);
