using DotQuant.Tests;

namespace DotQuant.Tasks.Tests;

/// <summary>Packs DotQuant.MSBuild once per test run into a local feed with a unique version, so no
/// stale package or cache can stand in for the code under test.</summary>
public sealed class PackageFixture : IAsyncLifetime
{
    readonly TempDir _root = new();
    public string Feed => Path.Combine(_root.Path, "feed");
    public string Packages => Path.Combine(_root.Path, "packages");
    public string Version { get; } = $"0.0.0-test.{Guid.NewGuid():N}"[..26];

    public async Task InitializeAsync()
    {
        var r = await Fixtures.RunAsync("dotnet", "pack", Path.Combine(SharedPaths.RepoRoot, "src", "Tasks", "DotQuant.MSBuild.csproj"),
            "-c", "Release", "-o", Feed, $"-p:Version={Version}");
        if (r.ExitCode != 0) throw new InvalidOperationException("dotnet pack of DotQuant.MSBuild failed:\n" + r.Stdout + r.Stderr);
    }

    public Task DisposeAsync()
    {
        _root.Dispose();
        return Task.CompletedTask;
    }

    /// <summary>A console app in a temp folder referencing the packed DotQuant.MSBuild.</summary>
    public TempDir CreateApp(string quantYaml, string extraProperties = "")
    {
        var dir = new TempDir();
        File.WriteAllText(dir.File("nuget.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <clear />
                <add key="local" value="{Feed}" />
              </packageSources>
            </configuration>
            """);
        File.WriteAllText(dir.File("app.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup>
                <OutputType>Exe</OutputType>
                <TargetFramework>net10.0</TargetFramework>
                <PackageId>Contoso.App</PackageId>
                <Version>1.0.0</Version>
                {extraProperties}
              </PropertyGroup>
              <ItemGroup>
                <PackageReference Include="DotQuant.MSBuild" Version="{Version}" PrivateAssets="all" />
              </ItemGroup>
            </Project>
            """);
        File.WriteAllText(dir.File("Program.cs"), "System.Console.WriteLine(string.Join(\",\", typeof(Program).Assembly.GetManifestResourceNames()));\n");
        File.WriteAllText(dir.File("quant.yaml"), quantYaml);
        return dir;
    }

    public Task<ProcessResult> Dotnet(TempDir app, string cache, params string[] args)
    {
        var env = new Dictionary<string, string> { ["NUGET_PACKAGES"] = Packages, ["DOTQUANT_CACHE"] = cache };
        return Fixtures.RunInAsync("dotnet", env, app.Path, args);
    }
}

[CollectionDefinition("package")]
public class PackageCollection : ICollectionFixture<PackageFixture>;
