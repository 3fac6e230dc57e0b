using System.Net;
using System.Net.Sockets;
using DotQuant.Runtime;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Orleans.Configuration;

namespace DotQuant.Cluster;

/// <summary><c>dotnet quantize worker</c>: an Orleans silo that takes shards of runs until stopped.
/// On <c>localhost[:PORT]</c> the first worker becomes the primary silo on PORT (gateway PORT+1) and the
/// others join it on free ports; with <c>redis://</c> every worker registers in Redis and advertises
/// <c>--address</c>.</summary>
public static class WorkerHost
{
    public static async Task RunAsync(ClusterAddress cluster, IPAddress? advertise, string scratch, string? models, ClusterSecurity? tls, bool kubernetes, TextWriter log, CancellationToken ct)
    {
        ClusterTimings.ThreadPool();
        Directory.CreateDirectory(scratch);
        void Log(string line)
        {
            lock (log)
            {
                log.WriteLine(line);
                log.Flush();
            }
        }
        var state = new WorkerState(scratch, models, Log, ct);
        bool primary = !cluster.IsRedis && PortIsFree(cluster.Port) && PortIsFree(cluster.PrimaryGateway);
        // In a Kubernetes pod the ports are the pod's own (Orleans' defaults); its IP comes from the pod's environment.
        int siloPort = kubernetes ? 11111 : primary ? cluster.Port : FreePort(), gatewayPort = kubernetes ? 30000 : primary ? cluster.PrimaryGateway : FreePort();
        var address = advertise ?? IPAddress.Loopback;
        var host = Host.CreateDefaultBuilder()
            .ConfigureLogging(l => l.ClearProviders().AddSimpleConsole(o => o.SingleLine = true).SetMinimumLevel(LogLevel.Error))
            .UseOrleans(silo =>
            {
                if (cluster.IsRedis)
                {
                    silo.UseRedisClustering(cluster.RedisConfiguration);
                    silo.Configure<ClusterOptions>(o => (o.ServiceId, o.ClusterId) = (ClusterAddress.ServiceId, ClusterAddress.ServiceId));
                    if (kubernetes)
                        silo.Configure<EndpointOptions>(o => (o.SiloPort, o.GatewayPort) = (siloPort, gatewayPort));
                    else
                        silo.ConfigureEndpoints(address, siloPort, gatewayPort);
                }
                else
                    silo.UseLocalhostClustering(siloPort, gatewayPort, cluster.PrimarySilo, ClusterAddress.ServiceId, ClusterAddress.ServiceId);
                // The pod watcher removes a deleted pod from membership at once, and gives the silo the pod's name and IP.
                if (kubernetes) silo.UseKubernetesHosting();
                if (tls is not null) silo.UseTls(tls.Certificate, tls.Configure);
                silo.Configure<ClusterMembershipOptions>(ClusterTimings.Membership);
                silo.Configure<SiloMessagingOptions>(o => o.ResponseTimeout = ClusterTimings.Call);
                silo.ConfigureServices(s => s.AddSingleton(state));
            })
            .Build();
        try
        {
            await host.StartAsync(ct);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            throw new DotQuantException(ErrorCodes.ClusterUnreachable,
                $"the worker could not join the cluster {cluster}{(cluster.IsRedis ? "" : primary ? "" : $" (the primary worker at {cluster.PrimarySilo} did not answer)")}: {e.GetBaseException().Message}");
        }
        var details = host.Services.GetRequiredService<Orleans.Runtime.ILocalSiloDetails>();
        Log($"worker ready: {details.SiloAddress.ToParsableString()} ({(primary ? "primary, " : "")}{(tls is null ? "" : "TLS, ")}cluster {cluster}, {state.Info("").Numerics}, DotQuant {state.Info("").EngineVersion}, scratch {scratch})");
        try
        {
            await Task.Delay(Timeout.Infinite, ct);
        }
        catch (OperationCanceledException)
        {
        }
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        try
        {
            await host.StopAsync(stop.Token);
        }
        catch (OperationCanceledException)
        {
        }
        host.Dispose();
        Log("worker stopped");
    }

    static bool PortIsFree(int port)
    {
        try
        {
            var l = new TcpListener(IPAddress.Loopback, port);
            l.Start();
            l.Stop();
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }
}

/// <summary>Timeouts shared by the workers and the coordinator. A call may run as long as a group's
/// statistics take (minutes on a 7B block); a member that dies is found by Orleans' membership probes
/// within seconds, and the calls to it are broken then, not at the call timeout.</summary>
public static class ClusterTimings
{
    public static readonly TimeSpan Call = TimeSpan.FromHours(12);

    /// <summary>Thread-pool threads ready at once. A member blocks pool threads on purpose (the coordinator
    /// waits for each shard's call on one, a worker runs engine work on one) while Orleans needs others
    /// for its messages; .NET's minimum is one per CPU the process may use, one on a core-pinned process,
    /// and every thread beyond it waits for the pool's starvation detection (about half a second each),
    /// which showed as ~0.8 s on each spread solve on pinned processes.</summary>
    public static void ThreadPool()
    {
        System.Threading.ThreadPool.GetMinThreads(out int workers, out int io);
        System.Threading.ThreadPool.SetMinThreads(Math.Max(workers, 32), Math.Max(io, 32));
    }

    public static void Membership(ClusterMembershipOptions o)
    {
        o.ProbeTimeout = TimeSpan.FromSeconds(2);
        o.NumMissedProbesLimit = 2;
        o.NumVotesForDeathDeclaration = 1;
        o.IAmAliveTablePublishTimeout = TimeSpan.FromSeconds(5);
        o.TableRefreshTimeout = TimeSpan.FromSeconds(5);
    }
}
