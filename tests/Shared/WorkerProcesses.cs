using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace DotQuant.Tests;

/// <summary>Real `dotnet-quantize worker` processes (Orleans silos on 127.0.0.1) for a test: started and
/// waited for ("worker ready" on their output, within a bound), killed on purpose when a test says so,
/// stopped (SIGTERM, then kill) when it ends.</summary>
public sealed class WorkerProcesses : IDisposable
{
    static readonly TimeSpan ReadyWithin = TimeSpan.FromSeconds(90);
    readonly List<(Process Process, List<string> Lines)> _workers = [];

    readonly string _tool;

    public string Cluster { get; }

    WorkerProcesses(string tool, string cluster)
    {
        _tool = tool;
        Cluster = cluster;
    }

    /// <summary>The dotnet-quantize.dll built beside the test assembly (Tool.Tests references the tool).</summary>
    public static string Tool => Path.Combine(AppContext.BaseDirectory, "dotnet-quantize.dll");

    /// <summary><paramref name="count"/> workers of <paramref name="cluster"/> running <paramref name="tool"/>;
    /// the first is started (and on localhost becomes the primary silo) before the others. With
    /// <paramref name="cores"/>, worker i runs on CPU cores[i] only (taskset).</summary>
    public static WorkerProcesses Start(string tool, string cluster, int count, int? threads, string? models = null, string[]? extra = null, int[]? cores = null)
    {
        var w = new WorkerProcesses(tool, cluster);
        try
        {
            if (!w.Add(threads, models, extra, cores?[0]).Wait(ReadyWithin)) throw new TimeoutException($"the first worker was not ready within {ReadyWithin.TotalSeconds:F0} s: {w.Logs}");
            if (count > 1 && !Task.WhenAll(Enumerable.Range(1, count - 1).Select(i => w.Add(threads, models, extra, cores?[i]))).Wait(ReadyWithin))
                throw new TimeoutException($"the workers were not ready within {ReadyWithin.TotalSeconds:F0} s: {w.Logs}");
            return w;
        }
        catch
        {
            w.Dispose();
            throw;
        }
    }

    Task Add(int? threads, string? models, string[]? extra, int? core)
    {
        var psi = new ProcessStartInfo(core is null ? "dotnet" : "taskset") { RedirectStandardOutput = true, RedirectStandardError = true };
        if (core is int c) foreach (var a in new[] { "-c", c.ToString(), "dotnet" }) psi.ArgumentList.Add(a);
        foreach (var a in new[] { _tool, "worker", "--cluster", Cluster }) psi.ArgumentList.Add(a);
        if (threads is int t) { psi.ArgumentList.Add("--threads"); psi.ArgumentList.Add(t.ToString()); }
        if (models is not null) { psi.ArgumentList.Add("--models"); psi.ArgumentList.Add(models); }
        foreach (var a in extra ?? []) psi.ArgumentList.Add(a);
        var p = Process.Start(psi)!;
        var lines = new List<string>();
        var ready = new TaskCompletionSource();
        void Seen(string? line)
        {
            if (line is null) return;
            lock (lines) lines.Add(line);
            if (line.StartsWith("worker ready", StringComparison.Ordinal)) ready.TrySetResult();
        }
        p.OutputDataReceived += (_, e) => Seen(e.Data);
        p.ErrorDataReceived += (_, e) => Seen(e.Data);
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        p.Exited += (_, _) => ready.TrySetException(new InvalidOperationException($"the worker exited ({Output(lines)})"));
        p.EnableRaisingEvents = true;
        lock (_workers) _workers.Add((p, lines));
        return ready.Task.WaitAsync(ReadyWithin);
    }

    static string Output(List<string> lines)
    {
        lock (lines) return string.Join(" | ", lines.TakeLast(5));
    }

    public int Count => _workers.Count;
    public int ProcessId(int index) => _workers[index].Process.Id;
    public string Log(int index) => Output(_workers[index].Lines);
    public string Logs => string.Join("\n", _workers.Select((w, i) => $"worker {i}: {Output(w.Lines)}"));

    /// <summary>kill -9: the worker disappears without a word, as a machine that loses power.</summary>
    public void Kill(int index)
    {
        var p = _workers[index].Process;
        using (var kill = Process.Start("kill", ["-KILL", p.Id.ToString()])!) kill.WaitForExit();
        p.WaitForExit(TimeSpan.FromSeconds(10));
    }

    public void Dispose()
    {
        foreach (var (p, _) in _workers)
            if (!p.HasExited)
                using (var term = Process.Start("kill", ["-TERM", p.Id.ToString()])!) term.WaitForExit();
        foreach (var (p, _) in _workers)
        {
            if (!p.WaitForExit(TimeSpan.FromSeconds(15))) p.Kill(entireProcessTree: true);
            p.Dispose();
        }
        _workers.Clear();
    }

    /// <summary>A loopback port P with P+1 also free (a localhost cluster's primary silo and gateway).</summary>
    public static int FreePortPair()
    {
        for (int attempt = 0; attempt < 50; attempt++)
        {
            var l = new TcpListener(IPAddress.Loopback, 0);
            l.Start();
            int port = ((IPEndPoint)l.LocalEndpoint).Port;
            l.Stop();
            if (port >= 65535) continue;
            try
            {
                var next = new TcpListener(IPAddress.Loopback, port + 1);
                next.Start();
                next.Stop();
                return port;
            }
            catch (SocketException)
            {
            }
        }
        throw new InvalidOperationException("no free pair of loopback ports");
    }
}
