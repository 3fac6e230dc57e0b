using System.Security.Cryptography;
using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

/// <summary>push to a folder feed, then `model: { package, version, source }` restores the float
/// model from it (through the fragment path, the harder one) and quantizes it exactly as from the folder.</summary>
public class FeedTests
{
    [Fact]
    public void PushThenRestoreAModelPackageRoundTrips()
    {
        using var dir = new TempDir();
        // Pack the float stories260K folder as a (fragmented) model package and push it.
        File.WriteAllText(dir.File("float.yaml"),
            $"version: 1\nmodel: {SharedPaths.Stories260K}\nquantize:\n  method: rtn\noutput:\n  name: stories260K\n  package: {{ id: Contoso.Float.Stories, version: 2.0.0 }}\n");
        var pack = CliRunner.Run("pack", dir.File("float.yaml"), "--model", SharedPaths.Stories260K, "-o", dir.File("out"), "--fragment-size", "300000", "--format", "json");
        Assert.True(pack.ExitCode == 0, pack.Stderr);
        var packages = pack.LastJson().GetProperty("packages").EnumerateArray().Select(p => p.GetString()!).ToArray();
        Assert.True(packages.Length >= 4);
        var push = CliRunner.Run(["push", .. packages, "--source", dir.File("feed")]);
        Assert.True(push.ExitCode == 0, push.Stderr);
        Assert.True(Directory.Exists(dir.File("feed")));

        // Quantize from the package and from the folder: the outputs must be the same bytes.
        string quantize = "quantize:\n  method: rtn\n  bits: 4\n  group_size: 16\noutput:\n  name: q\n";
        File.WriteAllText(dir.File("from-package.yaml"), "version: 1\nmodel: { package: Contoso.Float.Stories, version: 2.0.0, source: ./feed }\n" + quantize);
        File.WriteAllText(dir.File("from-folder.yaml"), $"version: 1\nmodel: {SharedPaths.Stories260K}\n" + quantize);
        var a = CliRunner.Run("run", dir.File("from-package.yaml"), "--cache-dir", dir.File("cache-a"), "--format", "json");
        Assert.True(a.ExitCode == 0, a.Stderr);
        var b = CliRunner.Run("run", dir.File("from-folder.yaml"), "--cache-dir", dir.File("cache-b"), "--format", "json");
        Assert.True(b.ExitCode == 0, b.Stderr);
        string outA = a.LastJson().GetProperty("output").GetString()!, outB = b.LastJson().GetProperty("output").GetString()!;
        Assert.Equal(SHA256.HashData(File.ReadAllBytes(Path.Combine(outA, "model.safetensors"))), SHA256.HashData(File.ReadAllBytes(Path.Combine(outB, "model.safetensors"))));
        // The restored float model sits in the DotQuant cache, reassembled and verified.
        Assert.Single(Directory.GetFiles(dir.File("cache-a/packages/contoso.float.stories/2.0.0"), "model.safetensors", SearchOption.AllDirectories));

        // A package that is not in the feed is a clear error.
        File.WriteAllText(dir.File("missing.yaml"), "version: 1\nmodel: { package: Contoso.Nope, version: 1.0.0, source: ./feed }\n" + quantize);
        var missing = CliRunner.Run("run", dir.File("missing.yaml"), "--cache-dir", dir.File("cache-c"));
        Assert.Equal(1, missing.ExitCode);
        Assert.Contains("error DQ0196", missing.Stderr);
    }
}
