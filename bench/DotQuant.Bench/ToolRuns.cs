using System.Diagnostics;
using System.Text.Json;

namespace DotQuant.Bench;

/// <summary>One `dotnet-quantize run --format json` in its own process: the summary line, each
/// quantized linear's loss, and the process's peak RSS (GNU time's maximum resident set).</summary>
sealed record ToolRun(JsonElement Summary, IReadOnlyDictionary<string, double> Losses, double PeakRssMb)
{
    public double Seconds => Summary.GetProperty("seconds").GetDouble();

    public double Phase(params string[] names) =>
        names.Sum(n => Summary.GetProperty("phases").TryGetProperty(n, out var v) ? v.GetDouble() : 0);

    /// <summary>Starts <paramref name="count"/> runs of the built tool together and waits for all.</summary>
    /// <param name="policy">OMP_WAIT_POLICY for the runs; null leaves the tool's own default.</param>
    public static ToolRun[] Start(string tool, string yaml, string dir, string? policy, int count)
    {
        var processes = Enumerable.Range(0, count).Select(i =>
        {
            var psi = new ProcessStartInfo("/usr/bin/time") { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in new[] { "-f", "maxrss-kb %M", "dotnet", tool, "run", yaml, "--output", Path.Combine(dir, $"out-{Guid.NewGuid():N}"), "--format", "json" })
                psi.ArgumentList.Add(a);
            if (policy is not null) psi.Environment["OMP_WAIT_POLICY"] = policy;
            else psi.Environment.Remove("OMP_WAIT_POLICY");
            return Process.Start(psi)!;
        }).ToList();
        var outputs = processes.Select(p => (Out: p.StandardOutput.ReadToEndAsync(), Err: p.StandardError.ReadToEndAsync())).ToList();
        var result = new ToolRun[count];
        for (int i = 0; i < count; i++)
        {
            processes[i].WaitForExit();
            string stdout = outputs[i].Out.Result, stderr = outputs[i].Err.Result;
            if (processes[i].ExitCode != 0) throw new InvalidOperationException($"run failed: {stderr}");
            var lines = stdout.Trim().Split('\n').Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();
            var losses = lines.Where(l => l.GetProperty("event").GetString() == "layer" && l.TryGetProperty("loss", out _))
                .ToDictionary(l => l.GetProperty("layer").GetString()!, l => l.GetProperty("loss").GetDouble());
            string rss = stderr.Split('\n').Last(l => l.StartsWith("maxrss-kb ", StringComparison.Ordinal));
            result[i] = new ToolRun(lines.Last(l => l.GetProperty("event").GetString() == "summary"), losses, double.Parse(rss[10..]) / 1024);
            processes[i].Dispose();
        }
        return result;
    }
}
