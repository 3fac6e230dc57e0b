using System.Diagnostics;
using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

/// <summary>Tests that start nested `dotnet` builds of repository projects run one at a time:
/// they share obj/ folders of the Engine.</summary>
[CollectionDefinition("nested dotnet builds", DisableParallelization = true)]
public class NestedBuilds;

[Collection("nested dotnet builds")]
public class SampleAppTests
{
    [Fact]
    public async Task ConsumingAppBuildsLoadsNativeLibraryAndGenerates()
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "run", "--project", Path.Combine(SharedPaths.RepoRoot, "samples", "ConsumingApp"), "-c", "Release", "--", SharedPaths.Stories260K, "Once upon a time" })
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string stdout = await p.StandardOutput.ReadToEndAsync();
        await p.WaitForExitAsync();
        Assert.True(p.ExitCode == 0, stdout + await err);
        Assert.StartsWith("Once upon a time, there was a little", stdout.Trim());
    }
}
