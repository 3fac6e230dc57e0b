using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace DotQuant.Tests;

/// <summary>A real Redis server (Debian's redis-server, which .ci/run installs) on a free loopback port,
/// without persistence, for one test; stopped when it ends.</summary>
public sealed class RedisServer : IDisposable
{
    readonly Process _process;

    public int Port { get; }
    public string Address => $"redis://127.0.0.1:{Port}";

    RedisServer(Process process, int port)
    {
        _process = process;
        Port = port;
    }

    public static RedisServer Start()
    {
        string binary = new[] { "/usr/bin/redis-server", "/usr/local/bin/redis-server" }.FirstOrDefault(File.Exists)
                        ?? throw new InvalidOperationException("redis-server is not installed: .ci/run installs it (apt-get install redis-server)");
        int port = WorkerProcesses.FreePortPair();
        var psi = new ProcessStartInfo(binary) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "--port", port.ToString(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "yes" })
            psi.ArgumentList.Add(a);
        var p = Process.Start(psi)!;
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        var server = new RedisServer(p, port);
        var deadline = Stopwatch.StartNew();
        while (!server.Ping())
        {
            if (p.HasExited || deadline.Elapsed > TimeSpan.FromSeconds(20))
            {
                server.Dispose();
                throw new InvalidOperationException($"redis-server did not answer on 127.0.0.1:{port}");
            }
            Thread.Sleep(100);
        }
        return server;
    }

    bool Ping()
    {
        try
        {
            using var c = new TcpClient();
            c.Connect(IPAddress.Loopback, Port);
            var s = c.GetStream();
            s.Write("PING\r\n"u8);
            var buffer = new byte[16];
            int n = s.Read(buffer);
            return Encoding.ASCII.GetString(buffer, 0, n).StartsWith("+PONG", StringComparison.Ordinal);
        }
        catch (SocketException)
        {
            return false;
        }
        catch (IOException)
        {
            return false;
        }
    }

    public void Dispose()
    {
        if (!_process.HasExited)
        {
            _process.Kill();
            _process.WaitForExit(10_000);
        }
        _process.Dispose();
    }
}
