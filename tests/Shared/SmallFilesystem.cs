using System.Diagnostics;
using System.Runtime.InteropServices;

namespace DotQuant.Tests;

/// <summary>A real size-limited file system for disk-full tests: a tmpfs of <c>size</c> bytes mounted on
/// a fresh folder (the test process must be root, as CI is), unmounted on dispose. Writes past the limit
/// fail with the kernel's ENOSPC, exactly as on a full disk.</summary>
public sealed class SmallFilesystem : IDisposable
{
    [DllImport("libc")]
    static extern uint geteuid();

    public string Path { get; }

    public SmallFilesystem(long size)
    {
        if (!OperatingSystem.IsLinux() || geteuid() != 0)
            throw new InvalidOperationException("disk-full tests mount a size-limited tmpfs and need to run as root on Linux (CI does)");
        Path = Directory.CreateTempSubdirectory("dotquant-smallfs-").FullName;
        Run("mount", "-t", "tmpfs", "-o", $"size={size}", "tmpfs", Path);
    }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>Fills the file system up to <paramref name="leave"/> free bytes with a ballast file.</summary>
    public string Fill(long leave = 0)
    {
        string ballast = File(".ballast");
        long free = new DriveInfo(Path).AvailableFreeSpace;
        using var fs = new FileStream(ballast, FileMode.Append, FileAccess.Write);
        var chunk = new byte[1 << 16];
        long left = Math.Max(0, free - leave);
        while (left > 0)
        {
            int n = (int)Math.Min(chunk.Length, left);
            try { fs.Write(chunk, 0, n); fs.Flush(); }
            catch (IOException) { break; }
            left -= n;
        }
        return ballast;
    }

    public long Free => new DriveInfo(Path).AvailableFreeSpace;

    static void Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{file} {string.Join(' ', args)} failed: {err}");
    }

    public void Dispose()
    {
        try { Run("umount", "-l", Path); } catch (InvalidOperationException) { }
        try { Directory.Delete(Path, true); } catch (IOException) { }
    }
}
