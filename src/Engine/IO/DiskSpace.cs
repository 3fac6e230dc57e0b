using DotQuant.Runtime;

namespace DotQuant.Engine.IO;

/// <summary>Free space on the file system of a folder, and what running out of it looks like: a run
/// checks its estimate before any work (<see cref="Require"/>) and turns the operating system's "no
/// space left" in the middle of a run into DQ0155 naming the folder and the space it needs
/// (<see cref="IsFull"/>), its completed blocks kept for <c>run --resume</c>.</summary>
public static class DiskSpace
{
    const int Enospc = 28, Edquot = 122;          // Linux errno: no space left; disk quota exceeded
    const int DiskFullWindows = unchecked((int)0x80070070), HandleDiskFull = unchecked((int)0x80070027);

    /// <summary>True when <paramref name="e"/> (or an exception inside it) is the file system being full.</summary>
    public static bool IsFull(Exception? e)
    {
        for (; e is not null; e = e.InnerException)
            if (e is IOException io && (io.HResult is Enospc or Edquot or DiskFullWindows or HandleDiskFull
                                        || io.Message.Contains("No space left on device", StringComparison.Ordinal)
                                        || io.Message.Contains("Disk quota exceeded", StringComparison.Ordinal)))
                return true;
        return false;
    }

    /// <summary>Bytes free to this process on the file system holding <paramref name="folder"/> (its
    /// nearest existing ancestor), or null when the platform cannot tell.</summary>
    public static long? Free(string folder)
    {
        var dir = new DirectoryInfo(Path.GetFullPath(folder));
        while (dir is not null && !dir.Exists) dir = dir.Parent;
        if (dir is null) return null;
        try
        {
            return new DriveInfo(dir.FullName).AvailableFreeSpace;
        }
        catch (Exception e) when (e is IOException or ArgumentException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>Refuses (DQ0155) when <paramref name="folder"/>'s file system has less free space than
    /// <paramref name="needed"/>.</summary>
    public static void Require(string folder, long needed, string what)
    {
        if (Free(folder) is long free && free < needed)
            throw new DotQuantException(ErrorCodes.DiskFull,
                $"not enough space for {what} in {Path.GetFullPath(folder)}: about {ByteSize.Format(needed)} needed, {ByteSize.Format(free)} free. " +
                "Free some space (or choose another folder) and run again.", folder);
    }

    /// <summary>DQ0155 for a write that found the file system full in the middle of a run.</summary>
    public static DotQuantException Full(string folder, long? needed, Exception cause) =>
        new(ErrorCodes.DiskFull,
            $"no space left in {Path.GetFullPath(folder)}{(needed is long n ? $" (the run needs about {ByteSize.Format(n)} there; {ByteSize.Format(Free(folder) ?? 0)} free now)" : "")}: " +
            "nothing was published and the previous output is untouched; free some space and run again with --resume to continue after the last completed block",
            folder, cause);
}
