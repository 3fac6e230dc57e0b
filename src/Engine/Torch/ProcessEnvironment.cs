using System.Runtime.InteropServices;

namespace DotQuant.Engine.Torch;

/// <summary>Variables native libraries (libgomp, ATen, MKL, glibc) read from the C environment once, when
/// they load. .NET's Environment.SetEnvironmentVariable does not reach getenv on Unix, hence setenv; the
/// .NET copy is set too so that child processes and later checks see the same value.</summary>
public static class ProcessEnvironment
{
    [DllImport("libc", EntryPoint = "setenv", SetLastError = true)]
    static extern int SetEnv(string name, string value, int overwrite);

    /// <summary>Sets <paramref name="name"/> unless the user already did; true when it was set here.</summary>
    public static bool SetIfUnset(string name, string value)
    {
        if (Environment.GetEnvironmentVariable(name) is { Length: > 0 }) return false;
        if (OperatingSystem.IsLinux() || OperatingSystem.IsMacOS())
            SetEnv(name, value, 0);
        Environment.SetEnvironmentVariable(name, value);
        return true;
    }
}
