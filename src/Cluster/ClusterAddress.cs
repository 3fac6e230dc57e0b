using System.Net;
using DotQuant.Runtime;

namespace DotQuant.Cluster;

/// <summary>Where a cluster's membership lives: <c>localhost[:PORT]</c> (Orleans' development clustering
/// on one machine: the first worker is the primary silo on PORT, default 11111, with its gateway on
/// PORT+1) or <c>redis://HOST:PORT</c> (Microsoft.Orleans.Clustering.Redis: any number of machines).</summary>
public sealed record ClusterAddress(string Text, bool IsRedis, string Host, int Port)
{
    public const int DefaultLocalPort = 11111;

    /// <summary>The Orleans service and cluster id every member uses.</summary>
    public const string ServiceId = "dotquant";

    public IPEndPoint PrimarySilo => new(IPAddress.Loopback, Port);
    public int PrimaryGateway => Port + 1;
    public string RedisConfiguration => $"{Host}:{Port}";

    public static ClusterAddress Parse(string text)
    {
        string t = text.Trim();
        if (t.StartsWith("redis://", StringComparison.OrdinalIgnoreCase))
        {
            var rest = t["redis://".Length..].TrimEnd('/');
            int colon = rest.LastIndexOf(':');
            string host = colon > 0 ? rest[..colon] : rest;
            int port = 6379;
            if (host.Length == 0 || (colon > 0 && !int.TryParse(rest[(colon + 1)..], out port)) || port is < 1 or > 65535)
                throw Bad(text);
            return new ClusterAddress(t, true, host.Trim('[', ']'), port);
        }
        if (t == "localhost") return new ClusterAddress(t, false, "127.0.0.1", DefaultLocalPort);
        if (t.StartsWith("localhost:", StringComparison.Ordinal) && int.TryParse(t["localhost:".Length..], out int p) && p is > 0 and < 65535)
            return new ClusterAddress(t, false, "127.0.0.1", p);
        throw Bad(text);
    }

    static DotQuantException Bad(string text) => new(ErrorCodes.ClusterAddress,
        $"--cluster '{text}' is not a cluster address: use localhost, localhost:PORT (one machine) or redis://HOST:PORT (a Redis server every member reaches)");

    public override string ToString() => Text;
}
