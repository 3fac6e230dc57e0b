namespace DotQuant.Cluster;

/// <summary>One shard of a run on one worker, keyed "SILO|SHARD" and placed on that silo (a worker may hold
/// two shards after taking over a lost one).
/// The calls follow <see cref="DotQuant.Engine.Distributed.IShardWorkers"/>; tensors travel in chunks
/// (<see cref="TensorChunks"/>).</summary>
public interface IShardGrain : IGrainWithStringKey
{
    Task<WorkerInfo> Describe();

    /// <summary>Checks the job against this worker (DQ0186), opens the model and embeds the shard.</summary>
    Task<long> Open(ShardMessage job);

    Task BeginBlock(int block);

    /// <summary>Computes the group's sums over the shard and keeps them until read.</summary>
    Task<SumsHeader> ComputeGroupSums(int block, int group);

    /// <summary>Chunk <paramref name="chunk"/> of the kept sums' tensor <paramref name="tensor"/> (in the header's order).</summary>
    Task<byte[]> ReadSums(int tensor, int chunk);

    /// <summary>Begins receiving tensor <paramref name="index"/> of the next <see cref="UseSolved"/> or <see cref="Solve"/>.</summary>
    Task PutTensor(int index, TensorHeader header);

    Task PutChunk(int index, int chunk, byte[] data);

    /// <summary>The tensors put are <paramref name="linear"/>'s wire form: the linear computes with it from now on.</summary>
    Task UseSolved(int block, string linear, WireHeader wire);

    /// <summary>Solves linears of the block from the tensors put (the scaled statistics) and keeps the results until read.</summary>
    Task<SolvedHeader[]> Solve(int block, SolveCall call);

    /// <summary>Chunk <paramref name="chunk"/> of tensor <paramref name="tensor"/> of solved linear <paramref name="linear"/>.</summary>
    Task<byte[]> ReadSolved(int linear, int tensor, int chunk);

    Task Advance(int block);

    /// <summary>Saves the shard's state between blocks on the worker and lists its files.</summary>
    Task<StateFile[]> SaveState();

    Task<byte[]> ReadStateFile(string name, long offset, int count);

    /// <summary>Forgets a state put earlier (a new one is coming).</summary>
    Task ClearState(string runKey);

    /// <summary>Receives part of a saved state's file before <see cref="Open"/> restores from it.</summary>
    Task PutStateFile(string runKey, string name, long offset, byte[] data);

    /// <summary>Releases the shard (the run is over).</summary>
    Task Close();
}
