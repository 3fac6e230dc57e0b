using DotQuant.Runtime;

namespace DotQuant.Runtime;

/// <summary>Creates a folder so that readers see either the previous complete folder or the new
/// complete one: contents are written to a hidden temp folder beside the destination, then the old
/// folder is moved aside, the new one moved in, and the old one deleted. An exception or a kill
/// while writing leaves the destination untouched (the temp folder is removed, or swept up by the
/// next write to the same destination).</summary>
public static class AtomicDirectory
{
    /// <param name="keepExisting">For content-addressed destinations: when another writer finished
    /// the same folder first, keep theirs (identical by construction) and discard ours, so a
    /// concurrent reader never sees the folder disappear.</param>
    public static void Write(string destination, Action<string> fill, bool keepExisting = false)
    {
        string full = Path.GetFullPath(destination);
        string parent = Path.GetDirectoryName(full)!;
        string name = Path.GetFileName(full);
        Directory.CreateDirectory(parent);
        SweepStale(parent, name);
        string tmp = Path.Combine(parent, $".{name}.tmp-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(tmp);
        try
        {
            fill(tmp);
            Publish(tmp, full, keepExisting);
        }
        catch (IOException e)
        {
            TryDelete(tmp);
            throw new DotQuantException(ErrorCodes.OutputWrite, $"could not write {full}: {e.Message}", full, e);
        }
        catch
        {
            TryDelete(tmp);
            throw;
        }
    }

    /// <summary>Moves the complete folder <paramref name="ready"/> (on the same file system) to
    /// <paramref name="destination"/>: the old folder is moved aside, the new one moved in, the old one
    /// deleted, so a reader sees one complete folder or the other.</summary>
    public static void Publish(string ready, string destination, bool keepExisting = false)
    {
        string full = Path.GetFullPath(destination);
        string parent = Path.GetDirectoryName(full)!;
        string name = Path.GetFileName(full);
        if (keepExisting && Directory.Exists(full))
        {
            TryDelete(ready);
            return;
        }
        string? old = null;
        if (Directory.Exists(full))
        {
            old = Path.Combine(parent, $".{name}.old-{Environment.ProcessId}-{Guid.NewGuid():N}");
            Directory.Move(full, old);
        }
        try
        {
            Directory.Move(ready, full);
        }
        catch
        {
            if (old is not null) Directory.Move(old, full);   // put the previous output back
            throw;
        }
        if (old is not null) TryDelete(old);
    }

    /// <summary>Removes temp folders of earlier writes that were killed, and restores a previous
    /// output that a kill left moved aside.</summary>
    internal static void SweepStale(string parent, string name)
    {
        // Another live process may be writing the same destination (two builds sharing a cache):
        // only folders whose writer has died are removed.
        foreach (var dir in Directory.EnumerateDirectories(parent, $".{name}.tmp-*"))
            if (!WriterAlive(dir)) TryDelete(dir);
        string full = Path.Combine(parent, name);
        foreach (var old in Directory.EnumerateDirectories(parent, $".{name}.old-*"))
        {
            if (!Directory.Exists(full)) Directory.Move(old, full);
            else TryDelete(old);
        }
    }

    static bool WriterAlive(string dir)
    {
        string suffix = Path.GetFileName(dir);
        int at = suffix.LastIndexOf(".tmp-", StringComparison.Ordinal) + 5;
        int dash = suffix.IndexOf('-', at);
        if (dash < 0 || !int.TryParse(suffix[at..dash], out int pid)) return false;
        if (pid == Environment.ProcessId) return false;
        try
        {
            using var p = System.Diagnostics.Process.GetProcessById(pid);
            return !p.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
    }

    internal static void TryDelete(string dir)
    {
        try { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
