using System.Diagnostics;
using System.Text;

namespace DotQuant.Bench;

/// <summary>Runs a command under a hard memory limit (a cgroup v1 memory controller or cgroup v2 as
/// root; the kernel kills the process if it goes over) and samples its anonymous resident memory
/// (RssAnon in /proc/PID/status) every 20 ms. Mapped checkpoint pages are file pages: they count
/// towards the cgroup's usage but the kernel drops them under pressure, so RssAnon is what decides
/// whether a run fits.</summary>
sealed class Limited
{
    public sealed record Result(int ExitCode, double Seconds, long PeakRssAnon, long PeakRss, long? CgroupPeak, long? Failcnt, string Stdout, string Stderr, bool Limited)
    {
        public bool Killed => ExitCode is 137 or -9;
    }

    /// <summary>Where limits can be set on this machine, or null (then runs are only measured).</summary>
    public static string? Controller()
    {
        if (Directory.Exists("/sys/fs/cgroup/memory") && File.Exists("/sys/fs/cgroup/memory/cgroup.procs")) return "/sys/fs/cgroup/memory";
        if (File.Exists("/sys/fs/cgroup/cgroup.controllers") && File.ReadAllText("/sys/fs/cgroup/cgroup.controllers").Contains("memory")) return "/sys/fs/cgroup";
        return null;
    }

    /// <param name="onLine">Sees each stdout line as it arrives (e.g. to signal the process).</param>
    public static Result Run(long limitBytes, string workingDirectory, string file, IEnumerable<string> args, Action<string, Process>? onLine = null)
    {
        string? controller = Controller();
        string? group = null;
        if (controller is not null)
        {
            group = Path.Combine(controller, $"dotquant-bench-{Environment.ProcessId}-{Guid.NewGuid():N}"[..40]);
            try
            {
                Directory.CreateDirectory(group);
                bool v1 = File.Exists(Path.Combine(group, "memory.limit_in_bytes"));
                File.WriteAllText(Path.Combine(group, v1 ? "memory.limit_in_bytes" : "memory.max"), limitBytes.ToString());
                if (!v1 && File.Exists(Path.Combine(group, "memory.swap.max"))) File.WriteAllText(Path.Combine(group, "memory.swap.max"), "0");
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                Console.WriteLine($"cannot create a cgroup ({e.Message}); measuring without a limit");
                group = null;
            }
        }
        // The shell joins the cgroup, then becomes the command (same PID), so every allocation counts.
        var psi = new ProcessStartInfo("/bin/sh") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = workingDirectory };
        psi.ArgumentList.Add("-c");
        string command = "exec \"$0\" \"$@\"";
        if (group is not null) command = $"echo $$ > {group}/cgroup.procs && " + command;
        psi.ArgumentList.Add(command);
        psi.ArgumentList.Add(file);
        foreach (var a in args) psi.ArgumentList.Add(a);
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        long peakAnon = 0, peakRss = 0;
        var stdout = new StringBuilder();
        var stderr = p.StandardError.ReadToEndAsync();
        var sampler = new Thread(() =>
        {
            while (!p.HasExited)
            {
                try
                {
                    foreach (var line in File.ReadLines($"/proc/{p.Id}/status"))
                    {
                        if (line.StartsWith("RssAnon:")) peakAnon = Math.Max(peakAnon, Kb(line));
                        else if (line.StartsWith("VmRSS:")) peakRss = Math.Max(peakRss, Kb(line));
                    }
                }
                catch (IOException) { }
                Thread.Sleep(20);
            }
        }) { IsBackground = true };
        sampler.Start();
        string? l;
        while ((l = p.StandardOutput.ReadLine()) is not null)
        {
            stdout.AppendLine(l);
            onLine?.Invoke(l, p);
        }
        p.WaitForExit();
        double seconds = sw.Elapsed.TotalSeconds;
        sampler.Join();
        long? cgroupPeak = null, failcnt = null;
        if (group is not null)
        {
            cgroupPeak = Read(group, "memory.max_usage_in_bytes") ?? Read(group, "memory.peak");
            failcnt = Read(group, "memory.failcnt");
            try { Directory.Delete(group); } catch (IOException) { }
        }
        return new Result(p.ExitCode, seconds, peakAnon, peakRss, cgroupPeak, failcnt, stdout.ToString(), stderr.Result, group is not null);
    }

    static long Kb(string line) => long.Parse(line.Split(':')[1].Trim().Split(' ')[0]) * 1024;

    static long? Read(string group, string file)
    {
        string path = Path.Combine(group, file);
        return File.Exists(path) && long.TryParse(File.ReadAllText(path).Trim(), out long v) ? v : null;
    }
}
