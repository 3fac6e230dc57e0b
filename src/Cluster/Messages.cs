using DotQuant.Engine.Distributed;

namespace DotQuant.Cluster;

/// <summary>What a worker reports about itself when the coordinator admits it.</summary>
[GenerateSerializer, Immutable]
public sealed record WorkerInfo(
    [property: Id(0)] string Silo,
    [property: Id(1)] string Machine,
    [property: Id(2)] int ProcessId,
    [property: Id(3)] string EngineVersion,
    [property: Id(4)] string Numerics);

/// <summary>A shard of a run as sent to one worker: the <see cref="ShardJob"/> with only its own
/// sequences.</summary>
[GenerateSerializer]
public sealed class ShardMessage
{
    [Id(0)] public string ManifestPath { get; set; } = "";
    [Id(1)] public string ManifestText { get; set; } = "";
    [Id(2)] public string ModelPath { get; set; } = "";
    [Id(3)] public Dictionary<string, string> ModelDigests { get; set; } = [];
    [Id(4)] public string EngineVersion { get; set; } = "";
    [Id(5)] public string Numerics { get; set; } = "";
    [Id(6)] public string RunKey { get; set; } = "";
    [Id(7)] public int Shard { get; set; }
    [Id(8)] public long[][] Sequences { get; set; } = [];
    /// <summary>Start from the state put with <see cref="IShardGrain.PutStateFile"/> at this block's input, or -1 to embed.</summary>
    [Id(9)] public int RestoreBlock { get; set; } = -1;
    /// <summary>The number of the shard's first sequence in the run (OAC's sampled labels are seeded per sequence).</summary>
    [Id(10)] public int FirstSequence { get; set; }

    public static ShardMessage Of(ShardJob job, int shard, int restoreBlock = -1) => new()
    {
        RestoreBlock = restoreBlock,
        ManifestPath = job.ManifestPath, ManifestText = job.ManifestText, ModelPath = job.ModelPath,
        ModelDigests = new Dictionary<string, string>(job.ModelDigests, StringComparer.Ordinal),
        EngineVersion = job.EngineVersion, Numerics = job.Numerics, RunKey = job.RunKey, Shard = shard,
        Sequences = job.Plan.Shards[shard].ToArray(), FirstSequence = job.Plan.FirstSequence(shard),
    };

    /// <summary>The job as the worker's engine sees it: one shard, its own, and the model folder where this
    /// worker keeps it (<paramref name="models"/>/NAME when the worker was given a models folder).</summary>
    public ShardJob ToJob(string? models) => new(ManifestPath, ManifestText,
        models is null ? ModelPath : Path.Combine(models, Path.GetFileName(ModelPath.TrimEnd('/', '\\'))),
        ModelDigests, EngineVersion, Numerics, RunKey, new ShardPlan([Sequences], FirstSequence));
}

/// <summary>A file of a shard's saved state.</summary>
[GenerateSerializer, Immutable]
public sealed record StateFile([property: Id(0)] string Name, [property: Id(1)] long Length);

/// <summary>A tensor sent in chunks below Orleans' message size limit: its dtype, shape and chunk count.</summary>
[GenerateSerializer, Immutable]
public sealed record TensorHeader(
    [property: Id(0)] string DType,
    [property: Id(1)] long[] Shape,
    [property: Id(2)] long Bytes,
    [property: Id(3)] int Chunks);

/// <summary>A group's shard sums (<see cref="DotQuant.Engine.Hessians.StatisticSums"/>): their names, each
/// as a chunked tensor, and the sequences they cover. <see cref="Symmetric"/>[i] &gt; 0: tensor i is the
/// upper triangle of a symmetric matrix of that side (<see cref="SymmetricPacking"/>).</summary>
[GenerateSerializer, Immutable]
public sealed record SumsHeader(
    [property: Id(0)] string[] Names,
    [property: Id(1)] TensorHeader[] Tensors,
    [property: Id(2)] int Sequences,
    [property: Id(3)] double Seconds,
    [property: Id(4)] long[] Symmetric);

/// <summary>A solved linear's wire form (<see cref="DotQuant.Engine.Quantizers.WireLinear"/>): kind, fields
/// (JSON) and its tensors, each chunked.</summary>
[GenerateSerializer, Immutable]
public sealed record WireHeader(
    [property: Id(0)] string Kind,
    [property: Id(1)] string Fields,
    [property: Id(2)] string[] Names,
    [property: Id(3)] TensorHeader[] Tensors);

/// <summary>The linears a worker solves, in order, each naming its H (and D; −1: none) among the tensors put before.</summary>
[GenerateSerializer, Immutable]
public sealed record SolveCall(
    [property: Id(0)] string[] Linears,
    [property: Id(1)] int[] H,
    [property: Id(2)] int[] D,
    [property: Id(3)] bool RtnBaseline);

/// <summary>One linear a worker solved, kept there until read.</summary>
[GenerateSerializer, Immutable]
public sealed record SolvedHeader(
    [property: Id(0)] string Linear,
    [property: Id(1)] WireHeader Wire,
    [property: Id(2)] double RtnLoss,
    [property: Id(3)] double Seconds,
    [property: Id(4)] string[] Warnings);

/// <summary>A DQ diagnostic raised on a worker, carried to the coordinator with its code.</summary>
[GenerateSerializer]
public sealed class ShardException : Exception
{
    public ShardException(string code, string message, string worker) : base(message)
    {
        Code = code;
        Worker = worker;
    }

    [Id(0)] public string Code { get; }
    [Id(1)] public string Worker { get; }
}
