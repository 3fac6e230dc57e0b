using System.Diagnostics;
using DotQuant.Runtime;
using DotQuant.Engine.Distributed;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Orleans.Configuration;
using Orleans.Runtime;
using Orleans.Runtime.Placement;

namespace DotQuant.Cluster;

/// <summary>The coordinator's side of <c>run --cluster</c>: an Orleans client that waits for the workers
/// to join, gives each a shard (placing its grain on that worker's silo) and drives them through the
/// blocks. What it measures (bytes exchanged, per-worker time) goes into <see cref="Traffic"/>.</summary>
public sealed class OrleansCluster : ICalibrationCluster, IDisposable
{
    readonly IHost _client;
    readonly IClusterClient _grains;
    /// <summary>The worker each shard is assigned to (index = shard).</summary>
    readonly List<SiloAddress> _silos;
    readonly HashSet<SiloAddress> _lost = [];

    OrleansCluster(IHost client, List<SiloAddress> silos, ClusterAddress address)
    {
        _client = client;
        _grains = client.Services.GetRequiredService<IClusterClient>();
        _silos = silos;
        Address = address;
    }

    public ClusterAddress Address { get; }
    public int Workers => _silos.Count;
    public ClusterTraffic Traffic { get; } = new();
    /// <summary>Takeovers: which shard moved from which worker to which, and when.</summary>
    public List<string> Takeovers { get; } = [];
    public IReadOnlyList<WorkerInfo> Members { get; private set; } = [];

    /// <summary>Connects to <paramref name="address"/> and waits up to <paramref name="timeout"/> for
    /// <paramref name="workers"/> workers (DQ0185 naming how many joined); null takes those that joined
    /// once at least one has.</summary>
    public static OrleansCluster Connect(ClusterAddress address, int? workers, TimeSpan timeout, ClusterSecurity? tls, Action<string> log, CancellationToken ct)
    {
        ClusterTimings.ThreadPool();
        var deadline = Stopwatch.StartNew();
        var client = Host.CreateDefaultBuilder()
            .ConfigureLogging(l => l.ClearProviders().SetMinimumLevel(LogLevel.None))
            .UseOrleansClient(c =>
            {
                if (address.IsRedis)
                {
                    c.UseRedisClustering(o => o.ConfigurationOptions = StackExchange.Redis.ConfigurationOptions.Parse(address.RedisConfiguration));
                    c.Configure<ClusterOptions>(o => (o.ServiceId, o.ClusterId) = (ClusterAddress.ServiceId, ClusterAddress.ServiceId));
                }
                else
                    c.UseLocalhostClustering(address.PrimaryGateway, ClusterAddress.ServiceId, ClusterAddress.ServiceId);
                if (tls is not null) c.UseTls(tls.Certificate, tls.Configure);
                c.Configure<ClientMessagingOptions>(o => o.ResponseTimeout = ClusterTimings.Call);
                c.UseConnectionRetryFilter(async (_, token) =>
                {
                    if (deadline.Elapsed >= timeout) return false;
                    await Task.Delay(TimeSpan.FromMilliseconds(250), token);
                    return true;
                });
            })
            .Build();
        try
        {
            using var connecting = CancellationTokenSource.CreateLinkedTokenSource(ct);
            connecting.CancelAfter(timeout);
            client.StartAsync(connecting.Token).GetAwaiter().GetResult();
        }
        catch (Exception e) when (e is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            client.Dispose();
            throw Unreachable(address, workers, 0, timeout, e.GetBaseException().Message);
        }
        try
        {
            var management = client.Services.GetRequiredService<IClusterClient>().GetGrain<IManagementGrain>(0);
            int wanted = workers ?? 1;
            List<SiloAddress> silos = [];
            while (true)
            {
                ct.ThrowIfCancellationRequested();
                var hosts = management.GetHosts(onlyActive: true).WaitAsync(TimeSpan.FromSeconds(10), ct).GetAwaiter().GetResult();
                silos = hosts.Keys.OrderBy(s => s.ToParsableString(), StringComparer.Ordinal).ToList();
                if (silos.Count >= wanted) break;
                if (deadline.Elapsed >= timeout) throw Unreachable(address, workers, silos.Count, timeout, null);
                log($"waiting for workers: {silos.Count} of {wanted} joined {address}");
                Task.Delay(TimeSpan.FromMilliseconds(500), ct).GetAwaiter().GetResult();
            }
            var cluster = new OrleansCluster(client, silos.Take(workers ?? silos.Count).ToList(), address);
            cluster.Members = cluster.Describe(ct);
            return cluster;
        }
        catch (Exception e) when (e is not DotQuantException and not OperationCanceledException)
        {
            client.Dispose();
            throw Unreachable(address, workers, 0, timeout, e.GetBaseException().Message);
        }
        catch
        {
            client.Dispose();
            throw;
        }
    }

    static DotQuantException Unreachable(ClusterAddress address, int? workers, int joined, TimeSpan timeout, string? why) => new(ErrorCodes.ClusterUnreachable,
        $"{(workers is int n ? $"{n} worker{(n == 1 ? "" : "s")} wanted" : "a worker wanted")}, {joined} joined the cluster {address} within {timeout.TotalSeconds:F0} s" +
        (why is null ? "" : $" ({why})") + ": start workers with `dotnet quantize worker --cluster " + address + "`, or raise --cluster-timeout");

    /// <summary>Shard <paramref name="shard"/>'s grain on the worker it is assigned to. Calls to it go through
    /// <see cref="Call{T}"/>, which sets the placement hint that puts its activation on that worker's silo.</summary>
    IShardGrain Grain(int shard) => _grains.GetGrain<IShardGrain>(ShardGrain.Key(_silos[shard].ToParsableString(), shard));

    List<WorkerInfo> Describe(CancellationToken ct) =>
        _silos.Select((_, k) => Call(k, g => g.Describe(), "joining", ct)).ToList();

    /// <summary>One call to shard <paramref name="shard"/>'s grain, its failures as DQ diagnostics: a
    /// worker that is gone is DQ0187 (<see cref="OrleansShardWorkers"/> then hands its shard to another).</summary>
    internal T Call<T>(int shard, Func<IShardGrain, Task<T>> call, string during, CancellationToken ct)
    {
        SiloAddress silo;
        IShardGrain grain;
        lock (_silos)
        {
            silo = _silos[shard];
            grain = Grain(shard);
        }
        RequestContext.Set(IPlacementDirector.PlacementHintKey, silo);
        try
        {
            var pending = call(grain);
            RequestContext.Clear();
            // A call already delivered to a worker that then dies is not broken for a client (only calls to
            // its gateway are): watch the membership while waiting, and give the call up once the worker is
            // no longer active.
            while (Task.WhenAny(pending, Task.Delay(MembershipPoll, ct)).GetAwaiter().GetResult() != pending)
            {
                if (!IsActive(silo, ct))
                {
                    _ = pending.ContinueWith(t => t.Exception, TaskScheduler.Default);
                    ct.ThrowIfCancellationRequested();
                    throw new OrleansException($"the worker left the cluster (membership no longer lists {silo} as active)");
                }
            }
            return pending.GetAwaiter().GetResult();
        }
        catch (ShardException e) when (e.Code != ErrorCodes.ClusterWorkerLost)
        {
            throw new DotQuantException(e.Code, $"worker {e.Worker}: {e.Message}");
        }
        catch (ShardException e)
        {
            throw new WorkerLostException(shard, silo, $"worker {silo} (shard {shard}) was lost {during}: {e.Message}");
        }
        catch (Exception e) when (IsTransport(e))
        {
            throw new WorkerLostException(shard, silo, $"worker {silo} (shard {shard}) was lost {during}: {e.GetBaseException().GetType().Name}: {e.GetBaseException().Message}");
        }
        catch (Exception e) when (e is not OperationCanceledException and not DotQuantException)
        {
            throw new DotQuantException(ErrorCodes.Internal, $"worker {silo} (shard {shard}) failed {during}: {e.GetType().Name}: {e.Message}");
        }
        finally
        {
            RequestContext.Clear();
        }
    }

    /// <summary>Failures of the member or of the way to it (not of the work it was asked to do).</summary>
    static bool IsTransport(Exception e) => e is OrleansException or TimeoutException or System.Net.Sockets.SocketException or IOException
        && e is not ShardException;

    static readonly TimeSpan MembershipPoll = TimeSpan.FromSeconds(1);
    (DateTime At, HashSet<SiloAddress> Active)? _membership;

    /// <summary>Whether <paramref name="silo"/> is active in the cluster's membership (a snapshot at most a
    /// second old; a membership query that does not answer within 5 s counts as "still active").</summary>
    internal bool IsActive(SiloAddress silo, CancellationToken ct)
    {
        lock (_lost)
            if (_lost.Contains(silo)) return false;
        var snapshot = _membership;
        if (snapshot is null || DateTime.UtcNow - snapshot.Value.At > MembershipPoll)
        {
            try
            {
                var hosts = _grains.GetGrain<IManagementGrain>(0).GetHosts(onlyActive: true).WaitAsync(TimeSpan.FromSeconds(5), ct).GetAwaiter().GetResult();
                snapshot = (DateTime.UtcNow, hosts.Keys.ToHashSet());
                _membership = snapshot;
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                return true;
            }
        }
        return snapshot.Value.Active.Contains(silo);
    }

    internal void Call(int shard, Func<IShardGrain, Task> call, string during, CancellationToken ct) =>
        Call(shard, async g => { await call(g); return 0; }, during, ct);

    /// <summary>Gives shard <paramref name="shard"/> to another worker, its current one being gone: one that
    /// holds no shard if any joined, else the one holding the fewest (ties by address). DQ0187 when none is left.</summary>
    internal SiloAddress Reassign(int shard, SiloAddress lost, CancellationToken ct)
    {
        lock (_lost) _lost.Add(lost);
        var management = _grains.GetGrain<IManagementGrain>(0);
        var hosts = management.GetHosts(onlyActive: true).WaitAsync(TimeSpan.FromSeconds(30), ct).GetAwaiter().GetResult();
        var live = hosts.Keys.Where(s => { lock (_lost) return !_lost.Contains(s); }).ToList();
        SiloAddress? chosen;
        lock (_silos)
            chosen = live.OrderBy(s => _silos.Count(a => a.Equals(s))).ThenBy(s => s.ToParsableString(), StringComparer.Ordinal).FirstOrDefault();
        if (chosen is null)
            throw new DotQuantException(ErrorCodes.ClusterWorkerLost, $"shard {shard}'s worker {lost} was lost and no worker is left in {Address} to take it over (active: {string.Join(", ", hosts.Keys)}; lost: {string.Join(", ", _lost)})");
        lock (_silos) _silos[shard] = chosen;
        return chosen;
    }

    public IShardWorkers Start(ShardJob job, CancellationToken ct)
    {
        if (job.Plan.Count != _silos.Count) _silos.RemoveRange(job.Plan.Count, _silos.Count - job.Plan.Count);
        foreach (var member in Members.Take(job.Plan.Count)) Admit(member, job);
        var sw = Stopwatch.StartNew();
        var workers = new OrleansShardWorkers(this, job);
        workers.Open(ct);
        Traffic.OpenSeconds = sw.Elapsed.TotalSeconds;
        return workers;
    }

    /// <summary>DQ0186 unless <paramref name="member"/> computes what this coordinator would.</summary>
    internal static void Admit(WorkerInfo member, ShardJob job)
    {
        if (member.EngineVersion != job.EngineVersion)
            throw new DotQuantException(ErrorCodes.ClusterMismatch, $"worker {member.Silo} on {member.Machine} runs DotQuant {member.EngineVersion}, this coordinator {job.EngineVersion}: every member of a run must run the same version");
        if (member.Numerics != job.Numerics)
            throw new DotQuantException(ErrorCodes.ClusterMismatch, $"worker {member.Silo} on {member.Machine} computes with numerics '{member.Numerics}', this coordinator with '{job.Numerics}': start the workers with the coordinator's --threads");
    }

    internal int Count => _silos.Count;

    /// <summary>The worker shard <paramref name="shard"/> is on now (another after a takeover).</summary>
    public string WorkerOf(int shard)
    {
        lock (_silos) return _silos[shard].ToParsableString();
    }

    public void Dispose()
    {
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        try
        {
            var closing = new List<Task>();
            for (int k = 0; k < _silos.Count; k++)
            {
                RequestContext.Set(IPlacementDirector.PlacementHintKey, _silos[k]);
                closing.Add(Grain(k).Close());
                RequestContext.Clear();
            }
            Task.WhenAll(closing).WaitAsync(stop.Token).GetAwaiter().GetResult();
        }
        catch (Exception)
        {
            // A worker that is gone has nothing to close.
        }
        try
        {
            _client.StopAsync(stop.Token).GetAwaiter().GetResult();
        }
        catch (Exception)
        {
        }
        _client.Dispose();
    }
}

/// <summary>A call to a shard failed because its worker is gone (killed, left, unreachable).</summary>
sealed class WorkerLostException(int shard, SiloAddress silo, string message) : Exception(message)
{
    public int Shard => shard;
    public SiloAddress Silo => silo;
}

/// <summary>What a distributed run exchanged and waited for.</summary>
public sealed class ClusterTraffic
{
    public long[] Tokens { get; set; } = [];
    public double OpenSeconds { get; set; }
    public long BytesReceived { get; set; }
    public long BytesSent { get; set; }
    /// <summary>Seconds reading the statistics back (after every shard computed them: transfer only).</summary>
    public double ReceiveSeconds { get; set; }
    /// <summary>Seconds sending the solved linears (codes and grids) to every worker.</summary>
    public double SendSeconds { get; set; }
    /// <summary>Scaled statistics sent to the workers that solve a group's linears, and the solved linears read back.</summary>
    public long SolveBytes { get; set; }
    /// <summary>Seconds of the solves spread over the workers (transfer included), summed over groups.</summary>
    public double SolveSeconds { get; set; }
    /// <summary>Seconds the workers' statistics took on the slowest shard of each group, summed (the run's
    /// critical path through the workers).</summary>
    public double SlowestSeconds { get; set; }
    /// <summary>Shard states sent to the coordinator after each block (its resume point) and back on a takeover.</summary>
    public long StateBytes { get; set; }
    /// <summary>Per shard, seconds computing statistics.</summary>
    public Dictionary<int, double> ComputeSeconds { get; } = [];
    /// <summary>Seconds the coordinator waited for the slowest worker beyond the fastest, summed over groups.</summary>
    public double WaitingOnSlowest { get; set; }
}
