using System.IO.Compression;
using DotQuant.Build;
using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

/// <summary>The packed .NET tool carries the weakened native library and runs once installed.</summary>
[Collection("nested dotnet builds")]
public class PackedToolTests
{
    [Fact]
    public async Task PackInstallAndRun()
    {
        using var dir = new TempDir();
        string feed = Path.Combine(dir.Path, "feed"), tools = Path.Combine(dir.Path, "tools");
        var pack = await Fixtures.RunAsync("dotnet", "pack", Path.Combine(SharedPaths.RepoRoot, "src", "Tool", "DotQuant.Tool.csproj"), "-c", "Release", "-o", feed, "-p:Version=0.0.0-test");
        Assert.True(pack.ExitCode == 0, pack.Stdout + pack.Stderr);
        string nupkg = Directory.GetFiles(feed, "*.nupkg").Single();

        using (var zip = ZipFile.OpenRead(nupkg))
        {
            var entry = zip.Entries.Single(e => e.FullName.EndsWith("libLibTorchSharp.so"));
            using var ms = new MemoryStream();
            using (var s = entry.Open()) s.CopyTo(ms);
            Assert.Equal(2, ElfVersionNeed.ReadFlags(ms.ToArray(), "libstdc++.so.6", "GLIBCXX_3.4.32"));
        }

        var install = await Fixtures.RunAsync("dotnet", "tool", "install", "dotnet-quantize", "--tool-path", tools, "--add-source", feed, "--version", "0.0.0-test");
        Assert.True(install.ExitCode == 0, install.Stdout + install.Stderr);
        var run = await Fixtures.RunAsync(Path.Combine(tools, "dotnet-quantize"), "inspect", SharedPaths.Stories260K, "--format", "json");
        Assert.Equal(0, run.ExitCode);
        Assert.Contains("\"parameters\":260032", run.Stdout);
        var help = await Fixtures.RunAsync(Path.Combine(tools, "dotnet-quantize"), "--help");
        Assert.Equal(0, help.ExitCode);
        Assert.Contains("run", help.Stdout);

        // As a local tool: a tool manifest makes `dotnet quantize` work in that folder.
        string local = Path.Combine(dir.Path, "local");
        Directory.CreateDirectory(local);
        Assert.Equal(0, (await Fixtures.RunInAsync("dotnet", null, local, "new", "tool-manifest")).ExitCode);
        var localInstall = await Fixtures.RunInAsync("dotnet", null, local, "tool", "install", "dotnet-quantize", "--add-source", feed, "--version", "0.0.0-test");
        Assert.True(localInstall.ExitCode == 0, localInstall.Stdout + localInstall.Stderr);
        var quantizeHelp = await Fixtures.RunInAsync("dotnet", null, local, "quantize", "--help");
        Assert.True(quantizeHelp.ExitCode == 0, quantizeHelp.Stdout + quantizeHelp.Stderr);
        Assert.Contains("fingerprint", quantizeHelp.Stdout);
    }
}
