using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace DotQuant.Bench;

/// <summary>Issue 13's shared-CPU question: the same GPTQ run alone and two at once on the machine's
/// cores, with libtorch's OpenMP threads spinning (OMP_WAIT_POLICY=ACTIVE, what every run did before)
/// and waiting passively (the tool's default now). Each run is the built tool in its own process; its
/// own per-phase figures show where sharing hurts.</summary>
static class SharedCpu
{
    public const string Marker = "shared-cpu";

    public static string Run(string shared, string repo)
    {
        string tool = Path.Combine(repo, "src", "Tool", "bin", "Release", "net10.0", "dotnet-quantize.dll");
        if (!File.Exists(tool)) throw new InvalidOperationException($"build the tool first: dotnet build -c Release src/Tool ({tool})");
        string dir = Directory.CreateTempSubdirectory("dotquant-shared-cpu-").FullName;
        try
        {
            string yaml = Path.Combine(dir, "quant.yaml");
            File.WriteAllText(yaml, $"version: 1\nmodel: {Path.Combine(shared, "models", "llama-tiny")}\ncalibration:\n  data: {Path.Combine(shared, "data", "wikitext2-tokenized", "valid.tokens")}\n" +
                "  samples: 128\n  sequence_length: 512\nquantize:\n  method: gptq\n  bits: 4\n  group_size: 128\noutput:\n  name: t\n");
            var sb = new StringBuilder();
            sb.AppendLine("## Sharing the CPU");
            sb.AppendLine();
            sb.AppendLine($"Produced by `dotnet build -c Release src/Tool && dotnet run -c Release --project bench/DotQuant.Bench -- shared-cpu` on {DateTime.UtcNow:yyyy-MM-dd} ({Environment.ProcessorCount} cores). Each run: `dotnet-quantize run quant.yaml --format json` in its own process — GPTQ W4 g128 of llama-tiny, 128 × 512 calibration tokens; \"two at once\" starts two identical runs together (seconds of each). Fair sharing would give 2× a lone run.");
            sb.AppendLine();
            sb.AppendLine("| OpenMP waiting | alone s | two at once s | ratio | two at once: factorization + solve s | two at once: capture + advance + xtx s |");
            sb.AppendLine("|---|---|---|---|---|---|");
            foreach (var (label, policy) in new[] { ("spinning (ACTIVE, before)", "ACTIVE"), ("passive (the tool's default)", null as string) })
            {
                var alone = Runs(tool, yaml, dir, policy, 1)[0];
                var two = Runs(tool, yaml, dir, policy, 2);
                double Phase(JsonElement s, params string[] names) => names.Sum(n => s.GetProperty("phases").TryGetProperty(n, out var v) ? v.GetDouble() : 0);
                string pair(Func<JsonElement, double> f) => string.Join(" / ", two.Select(f).Select(v => v.ToString("F1", CultureInfo.InvariantCulture)));
                double worst = two.Max(s => s.GetProperty("seconds").GetDouble());
                sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {label} | {alone.GetProperty("seconds").GetDouble():F1} | {pair(s => s.GetProperty("seconds").GetDouble())} | {worst / alone.GetProperty("seconds").GetDouble():F2} | {pair(s => Phase(s, "factorization", "solve"))} | {pair(s => Phase(s, "capture", "advance", "xtx"))} |"));
            }
            return sb.ToString();
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    /// <summary>Starts <paramref name="count"/> runs together and returns each one's JSON summary.</summary>
    static JsonElement[] Runs(string tool, string yaml, string dir, string? policy, int count)
    {
        var processes = Enumerable.Range(0, count).Select(i =>
        {
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in new[] { tool, "run", yaml, "--output", Path.Combine(dir, $"out-{Guid.NewGuid():N}"), "--format", "json" }) psi.ArgumentList.Add(a);
            if (policy is not null) psi.Environment["OMP_WAIT_POLICY"] = policy;
            else psi.Environment.Remove("OMP_WAIT_POLICY");
            return Process.Start(psi)!;
        }).ToList();
        var outputs = processes.Select(p => (Out: p.StandardOutput.ReadToEndAsync(), Err: p.StandardError.ReadToEndAsync())).ToList();
        var result = new JsonElement[count];
        for (int i = 0; i < count; i++)
        {
            processes[i].WaitForExit();
            string stdout = outputs[i].Out.Result;
            if (processes[i].ExitCode != 0) throw new InvalidOperationException($"run failed: {outputs[i].Err.Result}");
            string summary = stdout.Trim().Split('\n').Last(l => l.Contains("\"summary\""));
            result[i] = JsonDocument.Parse(summary).RootElement.Clone();
            processes[i].Dispose();
        }
        return result;
    }
}
