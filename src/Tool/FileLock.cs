using System.Diagnostics;

namespace DotQuant.Tool;

/// <summary>An exclusive lock between processes: an exclusive lock on a file (flock on Unix, a share-none
/// handle on Windows), so the kernel releases it when its holder exits, even killed; a sidecar file names
/// the holder for the waiting message. Used for one quantization at a time on the machine
/// (<see cref="MachineLock"/>) and one writer per cache entry (<see cref="Caching.CacheEntry"/>).</summary>
public sealed class FileLock : IDisposable
{
    readonly FileStream _handle;
    readonly string _owner;

    FileLock(FileStream handle, string owner)
    {
        _handle = handle;
        _owner = owner;
    }

    /// <summary>Takes the lock at <paramref name="path"/>, waiting while another process holds it.
    /// <paramref name="held"/> turns the holder's description into the one waiting message; after a wait,
    /// <paramref name="waiting"/> also hears how long it took.</summary>
    public static FileLock Acquire(string path, string what, Func<string, string> held, Action<string> waiting, CancellationToken ct, TimeSpan? poll = null)
    {
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
                if (told) waiting($"the other process finished after {wait.Elapsed.TotalSeconds:F0} s; continuing");
                return new FileLock(handle, owner);
            }
            if (!told)
            {
                waiting(held(TryRead(owner) ?? "another process"));
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
