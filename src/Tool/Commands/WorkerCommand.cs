using System.CommandLine;
using System.Net;
using DotQuant.Cluster;
using DotQuant.Runtime;

namespace DotQuant.Tool.Commands;

/// <summary><c>dotnet-quantize worker --cluster CLUSTER</c>: join a cluster as a worker (an Orleans
/// silo) and take shards of runs until stopped (Ctrl+C or SIGTERM).</summary>
public static class WorkerCommand
{
    public static Command Create(TextWriter stdout)
    {
        var cluster = new Option<string>("--cluster") { Description = "localhost, localhost:PORT or redis://HOST:PORT", Required = true };
        var address = new Option<string?>("--address") { Description = "the IP address other members reach this worker at (redis clusters; default 127.0.0.1)" };
        var scratch = new Option<string?>("--scratch") { Description = "folder for the worker's own files (QuaRot's rotated copy; default: a temp folder)" };
        var models = new Option<string?>("--models") { Description = "folder holding this worker's copies of the models (a run's model folder is looked up here by name; default: the coordinator's path)" };
        var tls = new Option<string?>("--tls-certificate") { Description = "PKCS#12 file (with its private key) every member of the cluster presents: mutual TLS between the members" };
        var tlsPassword = new Option<string?>("--tls-password") { Description = "the certificate file's password (default: the DOTQUANT_TLS_PASSWORD environment variable)" };
        var kubernetes = new Option<bool>("--kubernetes") { Description = "running in a Kubernetes pod (Microsoft.Orleans.Hosting.Kubernetes: the pod's IP and name, deleted pods leave the cluster at once); use with redis://" };
        var cmd = new Command("worker", "Join a cluster as a worker and take shards of `run --cluster` runs until stopped") { cluster, address, scratch, models, tls, tlsPassword, kubernetes };
        cmd.SetAction(async (parse, ct) =>
        {
            var where = ClusterAddress.Parse(parse.GetValue(cluster)!);
            IPAddress? advertise = null;
            if (parse.GetValue(address) is { } a && !IPAddress.TryParse(a, out advertise))
                throw new DotQuantException(ErrorCodes.ClusterAddress, $"--address '{a}' is not an IP address");
            string folder = parse.GetValue(scratch) ?? Path.Combine(Path.GetTempPath(), $"dotquant-worker-{Environment.ProcessId}");
            string? modelRoot = parse.GetValue(models) is { } mr ? Path.GetFullPath(mr) : null;
            var security = ClusterSecurity.Load(parse.GetValue(tls), parse.GetValue(tlsPassword) ?? Environment.GetEnvironmentVariable("DOTQUANT_TLS_PASSWORD"));
            if (parse.GetValue(kubernetes) && !where.IsRedis)
                throw new DotQuantException(ErrorCodes.ClusterAddress, "--kubernetes needs a membership every pod reaches: --cluster redis://HOST:PORT");
            await WorkerHost.RunAsync(where, advertise, Path.GetFullPath(folder), modelRoot, security, parse.GetValue(kubernetes), stdout, ct);
            if (parse.GetValue(scratch) is null && Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
            return ExitCodes.Ok;
        });
        return cmd;
    }
}
