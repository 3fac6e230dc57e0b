using System.Security.Cryptography;
using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

/// <summary>`dotnet quantize pack`: content packages a consumer restores and builds against.</summary>
[Collection("nested dotnet builds")]
public class ModelPackageTests
{
    static string Manifest(TempDir dir)
    {
        File.WriteAllText(dir.File("quant.yaml"),
            $"version: 1\nmodel: {SharedPaths.Stories260K}\nquantize:\n  method: rtn\n  bits: 4\n  group_size: 16\n" +
            "output:\n  name: storiespk\n  package: { id: Contoso.Models.Stories, version: 1.2.3, authors: Contoso }\n");
        return dir.File("quant.yaml");
    }

    static async Task<ProcessResult> BuildConsumer(TempDir dir, string feed)
    {
        string app = Path.Combine(dir.Path, "consumer-" + Path.GetFileName(feed));
        Directory.CreateDirectory(app);
        File.WriteAllText(Path.Combine(app, "nuget.config"),
            $"<?xml version=\"1.0\" encoding=\"utf-8\"?><configuration><packageSources><clear /><add key=\"local\" value=\"{feed}\" /></packageSources></configuration>");
        File.WriteAllText(Path.Combine(app, "consumer.csproj"),
            "<Project Sdk=\"Microsoft.NET.Sdk\"><PropertyGroup><OutputType>Exe</OutputType><TargetFramework>net10.0</TargetFramework></PropertyGroup>" +
            "<ItemGroup><PackageReference Include=\"Contoso.Models.Stories\" Version=\"1.2.3\" /></ItemGroup></Project>");
        File.WriteAllText(Path.Combine(app, "Program.cs"), "System.Console.WriteLine(\"ok\");\n");
        var env = new Dictionary<string, string> { ["NUGET_PACKAGES"] = Path.Combine(dir.Path, "packages-" + Path.GetFileName(feed)), ["DOTQUANT_CACHE"] = Path.Combine(dir.Path, "cache") };
        return await Fixtures.RunInAsync("dotnet", env, app, "build");
    }

    static void AssertSameFolder(string expected, string actual)
    {
        var a = Directory.GetFiles(expected).Select(Path.GetFileName).Order().ToList();
        Assert.Equal(a, Directory.GetFiles(actual).Select(Path.GetFileName).Order().ToList());
        foreach (var f in a)
            Assert.Equal(SHA256.HashData(File.ReadAllBytes(Path.Combine(expected, f!))), SHA256.HashData(File.ReadAllBytes(Path.Combine(actual, f!))));
    }

    [Fact]
    public async Task ContentPackageIsDeterministicAndLandsInTheConsumersOutput()
    {
        using var dir = new TempDir();
        string manifest = Manifest(dir);
        Assert.Equal(0, CliRunner.Run("run", manifest, "-v", "q").ExitCode);
        var pack = CliRunner.Run("pack", manifest, "-o", dir.File("feed"), "--format", "json");
        Assert.True(pack.ExitCode == 0, pack.Stderr);
        Assert.False(pack.LastJson().GetProperty("fragmented").GetBoolean());
        var bytes = File.ReadAllBytes(dir.File("feed/Contoso.Models.Stories.1.2.3.nupkg"));
        File.SetLastWriteTimeUtc(dir.File("storiespk/model.safetensors"), DateTime.UtcNow.AddDays(-3));
        Assert.Equal(0, CliRunner.Run("pack", manifest, "-o", dir.File("feed")).ExitCode);
        Assert.Equal(bytes, File.ReadAllBytes(dir.File("feed/Contoso.Models.Stories.1.2.3.nupkg")));

        var build = await BuildConsumer(dir, dir.File("feed"));
        Assert.True(build.ExitCode == 0, build.Stdout + build.Stderr);
        AssertSameFolder(dir.File("storiespk"), Path.Combine(dir.Path, "consumer-feed", "bin", "Debug", "net10.0", "models", "storiespk"));
    }

    [Fact]
    public async Task FragmentedPackageReassemblesByteIdenticallyIntoTheCache()
    {
        using var dir = new TempDir();
        string manifest = Manifest(dir);
        Assert.Equal(0, CliRunner.Run("run", manifest, "-v", "q").ExitCode);
        var pack = CliRunner.Run("pack", manifest, "-o", dir.File("frag"), "--fragment-size", "100000", "--format", "json");
        Assert.True(pack.ExitCode == 0, pack.Stderr);
        Assert.True(pack.LastJson().GetProperty("fragmented").GetBoolean());
        Assert.Equal(5, Directory.GetFiles(dir.File("frag"), "*.nupkg").Length);     // main + 4 fragments of ≤ 100 kB
        Assert.All(Directory.GetFiles(dir.File("frag"), "*.Fragment*.nupkg"), f => Assert.True(new FileInfo(f).Length < 120_000));

        var build = await BuildConsumer(dir, dir.File("frag"));
        Assert.True(build.ExitCode == 0, build.Stdout + build.Stderr);
        Assert.Contains("reassembled storiespk from 4 fragments", build.Stdout);
        AssertSameFolder(dir.File("storiespk"), Path.Combine(dir.Path, "consumer-frag", "bin", "Debug", "net10.0", "models", "storiespk"));
        // Reassembled into the DotQuant cache, never into the NuGet packages folder.
        Assert.True(File.Exists(Path.Combine(dir.Path, "cache", "packages", "contoso.models.stories", "1.2.3", "storiespk", "model.safetensors")));
        Assert.Empty(Directory.GetFiles(dir.File("packages-frag"), "model.safetensors", SearchOption.AllDirectories));
    }
}
