using System.Runtime.InteropServices;

namespace DotQuant.Tool.Tests;

/// <summary>The tool asks libtorch's OpenMP threads to wait passively unless the user chose otherwise,
/// and the setting reaches the C environment libgomp reads (not only .NET's copy of it).</summary>
public class ThreadPolicyTests
{
    [DllImport("libc", EntryPoint = "getenv")]
    static extern IntPtr GetEnv(string name);

    static string? NativeValue(string name = ThreadPolicy.Variable) => Marshal.PtrToStringAnsi(GetEnv(name));

    [Fact]
    public void ApplySetsPassiveInTheNativeEnvironmentAndKeepsAUsersChoice()
    {
        string? before = Environment.GetEnvironmentVariable(ThreadPolicy.Variable);
        if (before is { Length: > 0 })
        {
            ThreadPolicy.Apply();
            Assert.Equal(before, NativeValue());
            return;
        }
        ThreadPolicy.Apply();
        Assert.Equal("PASSIVE", NativeValue());
        Assert.Equal("PASSIVE", Environment.GetEnvironmentVariable(ThreadPolicy.Variable));
    }

    [Fact]
    public void The_team_size_is_the_CPUs_dotnet_sees_unless_the_user_chose_one()
    {
        string? before = Environment.GetEnvironmentVariable(ThreadPolicy.TeamVariable);
        ThreadPolicy.Apply();
        Assert.Equal(before is { Length: > 0 } ? before : Environment.ProcessorCount.ToString(), NativeValue(ThreadPolicy.TeamVariable));
    }
}
