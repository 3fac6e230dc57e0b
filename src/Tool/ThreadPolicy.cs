using System.Runtime.InteropServices;

namespace DotQuant.Tool;

/// <summary>How libtorch's OpenMP threads wait. By default they spin at every barrier, which is right
/// for a process that owns the cores and ruinous when two share them: the column loop's thousands of
/// small operations then spend their time spinning against each other (measured: two GPTQ runs of
/// llama-tiny on the 2 cores took 116 s each, 3.9× a lone run, with the factorization 50× slower;
/// with passive waiting 43 s each, and a lone run is unchanged). So the tool asks for passive waiting
/// unless the user set OMP_WAIT_POLICY. It must be in the C environment before libtorch (and its
/// libgomp, which reads it once when loaded) is: .NET's Environment.SetEnvironmentVariable does not
/// reach getenv on Unix, hence setenv.</summary>
static class ThreadPolicy
{
    public const string Variable = "OMP_WAIT_POLICY";

    [DllImport("libc", EntryPoint = "setenv", SetLastError = true)]
    static extern int SetEnv(string name, string value, int overwrite);

    public static void Apply()
    {
        if (Environment.GetEnvironmentVariable(Variable) is { Length: > 0 }) return;
        if (OperatingSystem.IsLinux() || OperatingSystem.IsMacOS())
            SetEnv(Variable, "PASSIVE", 0);
        Environment.SetEnvironmentVariable(Variable, "PASSIVE");
    }
}
