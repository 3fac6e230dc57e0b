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
        var r = await Fixtures.RunAsync("dotnet", "run", "--project", Path.Combine(SharedPaths.RepoRoot, "samples", "ConsumingApp"), "-c", "Release",
            "--", SharedPaths.Stories260K, "Once upon a time");
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        Assert.StartsWith("Once upon a time, there was a little", r.Stdout.Trim());
    }
}
