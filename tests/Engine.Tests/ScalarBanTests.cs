using System.Text;
using DotQuant.Tests;

namespace DotQuant.Engine.Tests;

/// <summary>TorchSharp's finalizer race, closed by construction: every TorchSharp API that creates a
/// temporary Scalar is banned in src/ (BannedApiAnalyzers reads src/BannedSymbols.txt, and RS0030 is an
/// error there). The list is not hand-kept: it is what <see cref="ScalarAllocations"/> finds in the IL of
/// the TorchSharp this repository builds against, so an upgrade that adds such an API fails here until
/// the list is regenerated (<c>DOTQUANT_WRITE_BANNED=1 dotnet test --filter ScalarBanTests</c>).</summary>
public class ScalarBanTests
{
    static string BannedFile => Path.Combine(SharedPaths.RepoRoot, "src", "BannedSymbols.txt");
    static string TorchSharpDll => Path.Combine(AppContext.BaseDirectory, "TorchSharp.dll");

    [Fact]
    public void BannedSymbolsListEveryTorchSharpApiThatCreatesATemporaryScalar()
    {
        var findings = ScalarAllocations.Scan(TorchSharpDll);
        // The scan must see the race's known sources, or it is not reading the IL it should.
        Assert.Contains(findings, f => f.DocId == "M:TorchSharp.Scalar.op_Implicit(System.Double)~TorchSharp.Scalar" && f.Factory);
        Assert.Contains(findings, f => f.DocId == "M:TorchSharp.torch.Tensor.add(TorchSharp.torch.Tensor)" && !f.Factory);
        Assert.Contains(findings, f => f.DocId == "M:TorchSharp.torch.Tensor.op_Addition(TorchSharp.torch.Tensor,TorchSharp.torch.Tensor)");
        Assert.Contains(findings, f => f.DocId == "M:TorchSharp.TensorExtensionMethods.ToDouble(TorchSharp.torch.Tensor)");
        // ... and not flag what passes its caller's Scalar straight through.
        Assert.DoesNotContain(findings, f => f.DocId == "M:TorchSharp.torch.Tensor.mul(TorchSharp.Scalar)");
        Assert.DoesNotContain(findings, f => f.DocId == "M:TorchSharp.torch.Tensor.add(TorchSharp.torch.Tensor,TorchSharp.Scalar)");

        string expected = BannedSymbolsFile.Render(findings);
        if (Environment.GetEnvironmentVariable("DOTQUANT_WRITE_BANNED") == "1")
            File.WriteAllText(BannedFile, expected);
        var listed = BannedSymbolsFile.Ids(File.ReadAllText(BannedFile));
        var missing = findings.Select(f => f.DocId).Where(id => !listed.Contains(id)).ToList();
        Assert.True(missing.Count == 0,
            $"{missing.Count} TorchSharp APIs create a temporary Scalar but are not banned in src/, e.g. {string.Join(", ", missing.Take(5))}; " +
            "regenerate src/BannedSymbols.txt with DOTQUANT_WRITE_BANNED=1");
        Assert.Equal(expected, File.ReadAllText(BannedFile));
    }

    /// <summary>A real build of a project placed under src/ (so it gets src/'s settings, as every src
    /// project does) fails on an implicit conversion and on an allocating operator, naming what to use.</summary>
    [Fact]
    public async Task AnImplicitScalarInSrcFailsTheBuildWithWhatToUseInstead()
    {
        string probe = Path.Combine(SharedPaths.RepoRoot, "src", $".probe-{Guid.NewGuid():N}");
        Directory.CreateDirectory(probe);
        try
        {
            File.WriteAllText(Path.Combine(probe, "Probe.csproj"), """
                <Project Sdk="Microsoft.NET.Sdk">
                  <PropertyGroup><OutputType>Library</OutputType></PropertyGroup>
                  <ItemGroup><PackageReference Include="TorchSharp" /></ItemGroup>
                </Project>
                """);
            File.WriteAllText(Path.Combine(probe, "Probe.cs"), """
                using static TorchSharp.torch;
                public static class Probe
                {
                    public static Tensor Half(Tensor t) => t.mul(0.5);
                    public static Tensor Sum(Tensor a, Tensor b) => a + b;
                    public static Tensor Quarter(Tensor a) { a /= 4; return a; }
                }
                """);
            var r = await Fixtures.RunAsync("dotnet", "build", Path.Combine(probe, "Probe.csproj"), "-nologo", "-v", "q");
            string output = r.Stdout + r.Stderr;
            Assert.NotEqual(0, r.ExitCode);
            Assert.Contains("error RS0030", output);
            Assert.Contains("implicit operator Scalar(double)", output);
            Assert.Contains("Scalars.Of", output);
            Assert.Contains("operator +(torch.Tensor, torch.Tensor)", output);
            Assert.Contains("a.Plus(b)", output);
            // BannedApiAnalyzers does not see compound assignments; DQ9030 (build/Analyzers) does.
            Assert.Contains("error DQ9030", output);
            Assert.Contains("operator /(TorchSharp.torch.Tensor, int)", output);
        }
        finally
        {
            Directory.Delete(probe, true);
        }
    }

    /// <summary>Every project under src/ compiles with the analyzer and the list (MSBuild's own view of
    /// its items, not a grep of the project files).</summary>
    [Fact]
    public async Task EverySrcProjectRunsTheAnalyzerWithTheList()
    {
        var projects = Directory.GetFiles(Path.Combine(SharedPaths.RepoRoot, "src"), "*.csproj", SearchOption.AllDirectories)
            .Where(p => !p.Contains(Path.DirectorySeparatorChar + ".probe-")).ToList();
        Assert.True(projects.Count >= 4, $"found {projects.Count} projects under src/");
        foreach (var project in projects)
        {
            // Analyzer items exist once NuGet's assets are resolved: run that target and read them.
            var r = await Fixtures.RunAsync("dotnet", "msbuild", project, "-t:ResolveLockFileAnalyzers", "-getItem:Analyzer", "-getItem:AdditionalFiles",
                "-getItem:ProjectReference", "-getProperty:WarningsAsErrors", "-nologo");
            Assert.True(r.ExitCode == 0, project + ": " + r.Stdout + r.Stderr);
            Assert.Contains("Microsoft.CodeAnalysis.BannedApiAnalyzers.dll", r.Stdout);
            Assert.Contains("BannedSymbols.txt", r.Stdout);
            Assert.Contains("DotQuant.Analyzers.csproj", r.Stdout);
            Assert.Contains("RS0030", r.Stdout);
            Assert.Contains("DQ9030", r.Stdout);
        }
    }
}

/// <summary>src/BannedSymbols.txt: one line per banned API, "ID;why and what to use instead".</summary>
public static class BannedSymbolsFile
{
    public const string ScalarToTensor = "M:TorchSharp.torch.Tensor.op_Implicit(TorchSharp.Scalar)~TorchSharp.torch.Tensor";
    const string Race = "creates a temporary TorchSharp Scalar that the GC may free while libtorch still reads it (docs/reliability.md)";

    public static string Render(IReadOnlyList<ScalarAllocations.Finding> findings)
    {
        var sb = new StringBuilder();
        sb.Append("// Generated by tests/Engine.Tests/ScalarBanTests.cs from TorchSharp's IL: every public API that creates a\n");
        sb.Append("// temporary Scalar (TorchSharp's finalizer race). Regenerate: DOTQUANT_WRITE_BANNED=1 dotnet test tests/Engine.Tests --filter ScalarBanTests\n");
        foreach (var f in findings) sb.Append(f.DocId).Append(';').Append(Advice(f)).Append('\n');
        sb.Append("// Not a Scalar allocation, but the trap next to the fix: TorchSharp converts a Scalar to a Tensor implicitly and throws at run time.\n");
        sb.Append(ScalarToTensor).Append(";throws InvalidOperationException at run time: where a Tensor is expected, pass a number (a 0-dim tensor) or a tensor, not Scalars.Of(...)\n");
        return sb.ToString();
    }

    public static HashSet<string> Ids(string text) =>
        text.Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith("//", StringComparison.Ordinal))
            .Select(l => l.Split(';')[0]).ToHashSet(StringComparer.Ordinal);

    static string Advice(ScalarAllocations.Finding f)
    {
        string id = f.DocId;
        if (id.Contains(".op_Implicit(") || id.Contains(".ToScalar(") || id.Contains("ToBFloat16Scalar"))
            return $"{Race}: use Scalars.Of(value) (rooted for the process) or Scalars.Use(value, s => ...) (disposed after the call)";
        if (id.EndsWith("Tensor.ToScalar", StringComparison.Ordinal) || id.Contains("TensorExtensionMethods.To") || id.Contains(".op_Explicit("))
            return $"{Race}: use t.item<T>() on a tensor of that dtype, or Scalars.ToDouble(t)";
        if (id.Contains("op_Addition(TorchSharp.torch.Tensor,TorchSharp.torch.Tensor)") || id.EndsWith(".add(TorchSharp.torch.Tensor)", StringComparison.Ordinal))
            return $"{Race} (an alpha of 1): use a.Plus(b), or a.add(b, Scalars.One)";
        if (id.EndsWith(".add_(TorchSharp.torch.Tensor)", StringComparison.Ordinal))
            return $"{Race} (an alpha of 1): use a.add_(b, Scalars.One)";
        if (id.Contains(".op_"))
            return $"{Race}: call the method with a Scalar, e.g. t.mul(Scalars.Of(x)), t.add(Scalars.Of(x), Scalars.One), t.rsub(Scalars.Of(x))";
        return $"{Race}: call an overload that takes every Scalar explicitly, passing Scalars.Of(...)";
    }
}
