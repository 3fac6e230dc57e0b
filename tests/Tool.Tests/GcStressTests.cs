using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

/// <summary>Every pipeline once under garbage-collector stress (GcStressRun): no crash, the stress really
/// ran, the rooted-Scalar cache stays small, and the bytes are the unstressed run's. The bench repeats
/// each case many times (`dotquant-bench reliability`).</summary>
public class GcStressTests
{
    static readonly string Tool = Path.Combine(AppContext.BaseDirectory, "dotnet-quantize.dll");

    public static IEnumerable<object[]> Cases() => GcStressRun.Cases.Select(c => new object[] { c.Name });

    [Theory]
    [MemberData(nameof(Cases))]
    public void A_whole_pipeline_survives_forced_collections_and_writes_the_same_bytes(string name)
    {
        var c = GcStressRun.Cases.Single(x => x.Name == name);
        using var work = new TempDir();
        string manifest = GcStressRun.Manifest(work.File("manifests"), SharedPaths.Root, c);
        var plain = GcStressRun.Run(Tool, manifest, work.File("plain"), stress: false);
        Assert.True(plain.ExitCode == 0, plain.Stderr);
        var stressed = GcStressRun.Run(Tool, manifest, work.File("stressed"), stress: true);
        Assert.True(stressed.ExitCode == 0, $"{name} under GC stress: exit {stressed.ExitCode}\n{stressed.Stderr}");
        Assert.True(stressed.Collections > 100, $"the stress thread forced only {stressed.Collections} collections");
        Assert.InRange(stressed.RootedScalars, 1, 512);
        Assert.Equal(plain.Files, stressed.Files);
    }
}
