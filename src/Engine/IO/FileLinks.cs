using System.Runtime.InteropServices;

namespace DotQuant.Engine.IO;

/// <summary>A second name for a file without copying its bytes (a hard link), or a copy where the file
/// system or platform cannot link.</summary>
static class FileLinks
{
    [DllImport("libc", EntryPoint = "link", SetLastError = true)]
    static extern int UnixLink(string oldPath, string newPath);

    [DllImport("kernel32", EntryPoint = "CreateHardLinkW", CharSet = CharSet.Unicode, SetLastError = true)]
    static extern bool WindowsLink(string newPath, string oldPath, IntPtr security);

    /// <summary>Makes <paramref name="destination"/> (replaced if present) have the contents of <paramref name="source"/>.</summary>
    public static void LinkOrCopy(string source, string destination)
    {
        if (File.Exists(destination)) File.Delete(destination);
        bool linked;
        try
        {
            linked = OperatingSystem.IsWindows() ? WindowsLink(destination, source, IntPtr.Zero) : UnixLink(source, destination) == 0;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            linked = false;
        }
        if (!linked) File.Copy(source, destination, overwrite: true);
    }
}
