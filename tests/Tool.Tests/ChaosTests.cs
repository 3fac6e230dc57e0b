using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

/// <summary>kill -9 and SIGTERM at seeded random moments of a llama-tiny run, for each output format's own
/// resume path, then --resume: the final folder is byte-identical to the undisturbed run's, nothing partial
/// is ever published and no working folder is left. Two moments per format and signal here; the bench
/// (`dotquant-bench reliability`) runs thirty.</summary>
public class ChaosTests
{
    static readonly string Tool = Path.Combine(AppContext.BaseDirectory, "dotnet-quantize.dll");

    [Theory]
    [InlineData("dotquant", 11)]
    [InlineData("gptq", 12)]
    [InlineData("gguf", 13)]
    [InlineData("onnx", 14)]
    public void Killed_or_terminated_at_random_moments_then_resumed_writes_the_undisturbed_bytes(string format, int seed)
    {
        if (!OperatingSystem.IsLinux()) return;
        using var work = new TempDir();
        string manifest = Chaos.Manifest(work.File("manifests"), SharedPaths.Root, format);
        var reference = Chaos.Reference(Tool, manifest, work.Path);
        foreach (var signal in new[] { "KILL", "TERM" })
        {
            var result = Chaos.Trials(Tool, manifest, work.Path, reference, 2, signal, seed);
            Assert.All(result.Trials, t => Assert.True(t.Identical, $"{format}, SIG{signal} at {t.At:F2} s (exit {t.ExitCode}): {t.Detail}"));
        }
    }
}
