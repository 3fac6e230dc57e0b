using System.Diagnostics;

namespace DotQuant.Tool;

/// <summary>At most one quantization at a time on this machine, for callers that ask (the MSBuild
/// integration does by default). Two runs sharing the cores each take longer than running one after
/// the other would (memory bandwidth, caches, and OpenMP teams sized for the whole machine), and
/// `dotnet build -m` of a solution with several quantizing projects, or a CI agent running two jobs,
/// starts exactly that. The lock is an exclusive lock on a file (flock on Unix, a share-none handle on
/// Windows), so the kernel releases it when its holder exits, even killed; a sidecar file names the
/// holder for the waiting message.</summary>
public sealed class MachineLock : IDisposable
{
    /// <summary>Overrides the lock file's path (tests; machines whose temp folder is per user).</summary>
    public const string PathVariable = "DOTQUANT_LOCK_FILE";

    readonly FileStream _handle;
    readonly string _owner;

    MachineLock(FileStream handle, string owner)
    {
        _handle = handle;
        _owner = owner;
    }

    public static string DefaultPath =>
        Environment.GetEnvironmentVariable(PathVariable) is { Length: > 0 } p ? p : Path.Combine(Path.GetTempPath(), "dotquant", "quantize.lock");

    /// <summary>Takes the lock, waiting while another process holds it; <paramref name="waiting"/> hears
    /// once who holds it and how to opt out.</summary>
    public static MachineLock Acquire(string what, Action<string> waiting, CancellationToken ct, string? path = null, TimeSpan? poll = null)
    {
        path ??= DefaultPath;
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        string owner = path + ".owner";
        bool told = false;
        var wait = Stopwatch.StartNew();
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            FileStream? handle = null;
            try
            {
                handle = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException)
            {
            }
            catch (UnauthorizedAccessException)
            {
            }
            if (handle is not null)
            {
                TryWrite(owner, $"pid {Environment.ProcessId}: {what}");
                if (told) waiting($"the other quantization finished after {wait.Elapsed.TotalSeconds:F0} s; starting");
                return new MachineLock(handle, owner);
            }
            if (!told)
            {
                string holder = TryRead(owner) ?? "another process";
                waiting($"another quantization is running on this machine ({holder}); waiting for it to finish, one at a time " +
                    "(runs sharing the cores are each slower). To run concurrently anyway: DotQuantExclusive=false in MSBuild, or drop --exclusive.");
                told = true;
            }
            ct.WaitHandle.WaitOne(poll ?? TimeSpan.FromSeconds(1));
        }
    }

    static void TryWrite(string file, string text)
    {
        try { File.WriteAllText(file, text); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    static string? TryRead(string file)
    {
        try { return File.ReadAllText(file).Trim(); }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    public void Dispose()
    {
        try { File.Delete(_owner); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        _handle.Dispose();
    }
}
