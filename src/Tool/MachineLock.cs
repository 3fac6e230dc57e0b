namespace DotQuant.Tool;

/// <summary>At most one quantization at a time on this machine, for callers that ask (the MSBuild
/// integration does by default). Two runs sharing the cores each take longer than running one after
/// the other would (memory bandwidth, caches, and OpenMP teams sized for the whole machine), and
/// `dotnet build -m` of a solution with several quantizing projects, or a CI agent running two jobs,
/// starts exactly that. A <see cref="FileLock"/> on a machine-wide path.</summary>
public static class MachineLock
{
    /// <summary>Overrides the lock file's path (tests; machines whose temp folder is per user).</summary>
    public const string PathVariable = "DOTQUANT_LOCK_FILE";

    public static string DefaultPath =>
        Environment.GetEnvironmentVariable(PathVariable) is { Length: > 0 } p ? p : Path.Combine(Path.GetTempPath(), "dotquant", "quantize.lock");

    /// <summary>Takes the lock, waiting while another process holds it; <paramref name="waiting"/> hears
    /// once who holds it and how to opt out.</summary>
    public static FileLock Acquire(string what, Action<string> waiting, CancellationToken ct, string? path = null, TimeSpan? poll = null) =>
        FileLock.Acquire(path ?? DefaultPath, what,
            holder => $"another quantization is running on this machine ({holder}); waiting for it to finish, one at a time " +
                      "(runs sharing the cores are each slower). To run concurrently anyway: DotQuantExclusive=false in MSBuild, or drop --exclusive.",
            waiting, ct, poll);
}
