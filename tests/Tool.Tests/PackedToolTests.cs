using System.Diagnostics;
using System.IO.Compression;
using DotQuant.Build;
using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

/// <summary>The packed .NET tool carries the weakened native library and runs once installed.</summary>
[Collection("nested dotnet builds")]
public class PackedToolTests
{
    static (int Code, string Output) Dotnet(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, output + err.Result);
    }

    [Fact]
    public void PackInstallAndRun()
    {
        using var dir = new TempDir();
        string feed = Path.Combine(dir.Path, "feed"), tools = Path.Combine(dir.Path, "tools");
        var pack = Dotnet("pack", Path.Combine(SharedPaths.RepoRoot, "src", "Tool", "DotQuant.Tool.csproj"), "-c", "Release", "-o", feed, "-p:Version=0.0.0-test");
        Assert.True(pack.Code == 0, pack.Output);
        string nupkg = Directory.GetFiles(feed, "*.nupkg").Single();

        using (var zip = ZipFile.OpenRead(nupkg))
        {
            var entry = zip.Entries.Single(e => e.FullName.EndsWith("libLibTorchSharp.so"));
            using var ms = new MemoryStream();
            using (var s = entry.Open()) s.CopyTo(ms);
            Assert.Equal(2, ElfVersionNeed.ReadFlags(ms.ToArray(), "libstdc++.so.6", "GLIBCXX_3.4.32"));
        }

        var install = Dotnet("tool", "install", "dotnet-quantize", "--tool-path", tools, "--add-source", feed, "--version", "0.0.0-test");
        Assert.True(install.Code == 0, install.Output);
        var psi = new ProcessStartInfo(Path.Combine(tools, "dotnet-quantize")) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "inspect", SharedPaths.Stories260K, "--format", "json" }) psi.ArgumentList.Add(a);
        using var run = Process.Start(psi)!;
        string stdout = run.StandardOutput.ReadToEnd();
        run.WaitForExit();
        Assert.Equal(0, run.ExitCode);
        Assert.Contains("\"parameters\":260032", stdout);
    }
}
