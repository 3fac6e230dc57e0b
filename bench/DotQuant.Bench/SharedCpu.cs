using System.Globalization;
using System.Text;

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
                var alone = ToolRun.Start(tool, yaml, dir, policy, 1)[0];
                var two = ToolRun.Start(tool, yaml, dir, policy, 2);
                string pair(Func<ToolRun, double> f) => string.Join(" / ", two.Select(f).Select(v => v.ToString("F1", CultureInfo.InvariantCulture)));
                double worst = two.Max(s => s.Seconds);
                sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {label} | {alone.Seconds:F1} | {pair(s => s.Seconds)} | {worst / alone.Seconds:F2} | {pair(s => s.Phase("factorization", "solve"))} | {pair(s => s.Phase("capture", "advance", "xtx"))} |"));
            }
            return sb.ToString();
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
