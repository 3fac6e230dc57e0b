namespace DotQuant.Engine.Distributed;

/// <summary>Workers a run can spread its calibration over (the tool's Orleans cluster).</summary>
public interface ICalibrationCluster
{
    /// <summary>How many shards the run is split into: the workers it was asked to wait for.</summary>
    int Workers { get; }

    /// <summary>Starts one shard per worker: each checks that its checkpoint, engine version and numerics
    /// are the coordinator's (DQ0186 if not), opens the model and embeds its shard.</summary>
    IShardWorkers Start(ShardJob job, CancellationToken ct);
}

/// <summary>What a worker needs to take a shard: the manifest (its text, and the path it resolves its
/// relative paths against), the model folder, what must match (file digests of the model, engine version,
/// numerics key) and the shards' token ids.</summary>
public sealed record ShardJob(
    string ManifestPath,
    string ManifestText,
    string ModelPath,
    IReadOnlyDictionary<string, string> ModelDigests,
    string EngineVersion,
    string Numerics,
    string RunKey,
    ShardPlan Plan);
