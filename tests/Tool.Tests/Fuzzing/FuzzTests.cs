using DotQuant.Tests;

namespace DotQuant.Tool.Tests.Fuzzing;

/// <summary>Process-wide measurements (peak RSS per execution) must not see other tests' allocations.</summary>
[CollectionDefinition("process-wide measurements", DisableParallelization = true)]
public sealed class ProcessWideMeasurements;

/// <summary>Every reader, fed hostile files (ReaderFuzz): a fixed-seed sample per target in every CI run
/// (the bench runs thousands), and every input the fuzzer ever found failing, kept under
/// Fuzzing/Crashers and replayed.</summary>
[Collection("process-wide measurements")]
public class FuzzTests
{
    public static IEnumerable<object[]> Targets() => ReaderFuzz.Targets.Select(t => new object[] { t.Name });

    [Theory]
    [MemberData(nameof(Targets))]
    public void Hostile_files_get_a_DQ_error_or_are_read_never_a_crash_a_hang_or_a_huge_allocation(string name)
    {
        var target = ReaderFuzz.Targets.Single(t => t.Name == name);
        // A fixed seed per target: CI replays the same inputs every run. DOTQUANT_FUZZ_ITERATIONS and
        // DOTQUANT_FUZZ_SEED=random turn it into a campaign (what the bench does).
        int iterations = int.TryParse(Environment.GetEnvironmentVariable("DOTQUANT_FUZZ_ITERATIONS"), out int n) ? n : 30;
        string? seed = Environment.GetEnvironmentVariable("DOTQUANT_FUZZ_SEED") == "random" ? null
            : new CsCheck.PCG((uint)ReaderFuzz.Targets.ToList().IndexOf(target) + 1, 20261207).ToString();
        long executions = ReaderFuzz.Check(target, iterations, seed);
        Assert.True(executions >= iterations, $"{executions} executions");
    }

    public static IEnumerable<object[]> Crashers() =>
        Directory.Exists(CrasherFolder) ? Directory.GetFiles(CrasherFolder, "*.bin").Order(StringComparer.Ordinal).Select(f => new object[] { Path.GetFileName(f) }) : [];

    static string CrasherFolder => Path.Combine(AppContext.BaseDirectory, "Fuzzing", "Crashers");

    /// <summary>Each file is named after its target (its slug) and holds the whole failing input.</summary>
    [Theory]
    [MemberData(nameof(Crashers))]
    public void Inputs_the_fuzzer_once_found_failing_now_pass(string file)
    {
        var target = ReaderFuzz.Targets.Single(t => file.StartsWith(ReaderFuzz.Slug(t.Name) + "-", StringComparison.Ordinal));
        var verdict = ReaderFuzz.Execute(target, File.ReadAllBytes(Path.Combine(CrasherFolder, file)));
        Assert.True(verdict.Ok, verdict.Why);
    }
}
