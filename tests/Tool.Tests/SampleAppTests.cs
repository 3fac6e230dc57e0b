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
    public async Task ConsumingAppQuantizesToGgufOnBuildAndGeneratesWithLlamaCpp()
    {
        // Its own cache folder: the test must see the build do the work, not a cache hit.
        using var cache = new TempDir();
        var r = await Fixtures.RunAsync("dotnet", "run", "--project", Path.Combine(SharedPaths.RepoRoot, "samples", "ConsumingApp"), "-c", "Release",
            $"--property:DotQuantCacheDir={cache.Path}", "--", "Once upon a time");
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        Assert.StartsWith("Once upon a time, there was a little", r.Stdout.Trim());
        Assert.Matches(@"tokens/s\) from .*models/stories260K/stories260K-q4_1\.gguf", r.Stderr);
        Assert.Single(Directory.GetDirectories(cache.Path));       // one content-addressed entry
        // The app runs the quantized GGUF with llama.cpp: neither the engine nor libtorch ships with it.
        string bin = Path.Combine(SharedPaths.RepoRoot, "samples", "ConsumingApp", "bin", "Release", "net10.0");
        Assert.True(File.Exists(Path.Combine(bin, "LLamaSharp.dll")));
        foreach (var absent in new[] { "DotQuant.Engine.dll", "TorchSharp.dll" })
            Assert.False(File.Exists(Path.Combine(bin, absent)), $"{absent} is in the app's output");
        Assert.Empty(Directory.GetFiles(bin, "libtorch*", SearchOption.AllDirectories));
    }

    [Fact]
    public async Task OnnxAppQuantizesToOnnxOnBuildAndGeneratesWithOnnxRuntimeGenAI()
    {
        using var cache = new TempDir();
        var r = await Fixtures.RunAsync("dotnet", "run", "--project", Path.Combine(SharedPaths.RepoRoot, "samples", "OnnxApp"), "-c", "Release",
            $"--property:DotQuantCacheDir={cache.Path}", "--", "Once upon a time");
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        Assert.StartsWith("Once upon a time, there was a little", r.Stdout.Trim());
        Assert.Matches(@"96 tokens in .* tokens/s\) from .*models/stories260K", r.Stderr);
        Assert.Single(Directory.GetDirectories(cache.Path));
        // The app runs the int4 folder with ONNX Runtime GenAI: neither the engine nor libtorch ships with it.
        string bin = Path.Combine(SharedPaths.RepoRoot, "samples", "OnnxApp", "bin", "Release", "net10.0");
        foreach (var f in new[] { "model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json" })
            Assert.True(File.Exists(Path.Combine(bin, "models", "stories260K", f)), $"{f} was not shipped");
        Assert.True(File.Exists(Path.Combine(bin, "Microsoft.ML.OnnxRuntimeGenAI.dll")));
        foreach (var absent in new[] { "DotQuant.Engine.dll", "TorchSharp.dll" })
            Assert.False(File.Exists(Path.Combine(bin, absent)), $"{absent} is in the app's output");
        Assert.Empty(Directory.GetFiles(bin, "libtorch*", SearchOption.AllDirectories));
    }
}
