using System.IO.Compression;
using DotQuant.Tests;

namespace DotQuant.Tasks.Tests;

[Collection("package")]
public class BuildIntegrationTests(PackageFixture package)
{
    static string Manifest(string name, bool embed = false, string quantize = "  method: gptq\n  bits: 4\n  group_size: 16\n") =>
        $"version: 1\nmodel: {SharedPaths.Stories260K}\ncalibration:\n  data: calib.txt\n  samples: 8\n  sequence_length: 64\n  seed: 0\n" +
        $"quantize:\n{quantize}output:\n  name: {name}\n  embed: {(embed ? "true" : "false")}\n";

    static void WriteCalibration(TempDir app, int stories) =>
        File.WriteAllText(app.File("calib.txt"), string.Join("\n\n",
            File.ReadAllLines(SharedPaths.Data("tinystories", "stories-sample.txt")).Where(l => l.Trim().Length > 0).Take(stories)));

    const string Quantizing = "DotQuant: quantizing as";

    /// <summary>DotQuantCluster reaches the tool: a worker started from the packed tool takes the build's
    /// shard; a worker built from this repository's tool (another DotQuant version than the package the
    /// build uses) is refused with DQ0186 and the build fails without an output.</summary>
    [Fact]
    public async Task DotQuantClusterRunsOnTheWorkersAndAnotherVersionIsRefused()
    {
        using var app = package.CreateApp(Manifest("tiny"));
        using var cache = new TempDir();
        WriteCalibration(app, 10);
        var restore = await package.Dotnet(app, cache.Path, "restore");
        Assert.True(restore.ExitCode == 0, restore.Stdout + restore.Stderr);
        string packed = Path.Combine(package.Packages, "dotquant.msbuild", package.Version.ToLowerInvariant(), "tools", "dotnet-quantize", "dotnet-quantize.dll");
        Assert.True(File.Exists(packed), packed);

        string cluster = $"localhost:{WorkerProcesses.FreePortPair()}";
        using (var workers = WorkerProcesses.Start(packed, cluster, 1, threads: null))
        {
            var build = await package.Dotnet(app, cache.Path, "build", "-c", "Release", $"-p:DotQuantCluster={cluster}", "-p:DotQuantWorkers=1");
            Assert.True(build.ExitCode == 0, build.Stdout + build.Stderr + workers.Logs);
            Assert.True(File.Exists(Path.Combine(app.Path, "bin", "Release", "net10.0", "models", "tiny", "model.safetensors")));
            Assert.Contains("shard 0:", workers.Log(0));
        }

        // The repository's own build of the tool (Debug or Release, as these tests were built).
        string configuration = new DirectoryInfo(AppContext.BaseDirectory).Parent!.Name;
        string repoTool = Path.Combine(SharedPaths.RepoRoot, "src", "Tool", "bin", configuration, "net10.0", "dotnet-quantize.dll");
        Assert.True(File.Exists(repoTool), repoTool);
        WriteCalibration(app, 12);
        string other = $"localhost:{WorkerProcesses.FreePortPair()}";
        using (var workers = WorkerProcesses.Start(repoTool, other, 1, threads: null))
        {
            var refused = await package.Dotnet(app, cache.Path, "build", "-c", "Release", $"-p:DotQuantCluster={other}", "-p:DotQuantWorkers=1");
            Assert.NotEqual(0, refused.ExitCode);
            Assert.Contains("DQ0186", refused.Stdout + refused.Stderr);
            Assert.Contains("runs DotQuant", refused.Stdout + refused.Stderr);
        }
    }

    [Fact]
    public async Task FirstBuildQuantizesSecondSkipsChangedCalibrationRequantizes()
    {
        using var app = package.CreateApp(Manifest("tiny"));
        using var cache = new TempDir();
        WriteCalibration(app, 10);

        var first = await package.Dotnet(app, cache.Path, "build", "-c", "Release");
        Assert.True(first.ExitCode == 0, first.Stdout + first.Stderr);
        Assert.Contains(Quantizing, first.Stdout);
        string model = Path.Combine(app.Path, "bin", "Release", "net10.0", "models", "tiny");
        Assert.True(File.Exists(Path.Combine(model, "model.safetensors")));
        Assert.True(File.Exists(Path.Combine(model, "dotquant.json")));
        var entries = Directory.GetDirectories(cache.Path);
        Assert.Single(entries);

        var second = await package.Dotnet(app, cache.Path, "build", "-c", "Release", "-v", "d");
        Assert.Equal(0, second.ExitCode);
        Assert.DoesNotContain(Quantizing, second.Stdout);
        Assert.Contains("Skipping target \"DotQuantQuantize\" because all output files are up-to-date", second.Stdout);

        WriteCalibration(app, 12);
        var third = await package.Dotnet(app, cache.Path, "build", "-c", "Release");
        Assert.Equal(0, third.ExitCode);
        Assert.Contains(Quantizing, third.Stdout);
        Assert.Equal(2, Directory.GetDirectories(cache.Path).Length);   // a new content-addressed entry

        // A cleared cache is noticed: the next build quantizes again instead of failing.
        Directory.Delete(cache.Path, true);
        var afterClear = await package.Dotnet(app, cache.Path, "build", "-c", "Release");
        Assert.True(afterClear.ExitCode == 0, afterClear.Stdout + afterClear.Stderr);
        Assert.Contains(Quantizing, afterClear.Stdout);
        Assert.Single(Directory.GetDirectories(cache.Path));

        // dotnet clean removes the copied model; the shared cache stays.
        var clean = await package.Dotnet(app, cache.Path, "clean", "-c", "Release");
        Assert.Equal(0, clean.ExitCode);
        Assert.False(File.Exists(Path.Combine(model, "model.safetensors")));
        Assert.Single(Directory.GetDirectories(cache.Path));
    }

    [Fact]
    public async Task ManifestErrorIsReportedAtItsLineAndColumn()
    {
        using var app = package.CreateApp(Manifest("bad", quantize: "  method: gptq\n  bitz: 4\n"));
        using var cache = new TempDir();
        WriteCalibration(app, 10);
        var r = await package.Dotnet(app, cache.Path, "build");
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains($"{app.File("quant.yaml")}(10,3): error DQ0002: unknown key 'bitz'", r.Stdout);
        Assert.DoesNotContain("MSB6006", r.Stdout);
    }

    [Fact]
    public async Task EmbedYieldsManifestResources()
    {
        using var app = package.CreateApp(Manifest("embedded", embed: true, quantize: "  method: rtn\n  bits: 4\n  group_size: 16\n"));
        using var cache = new TempDir();
        WriteCalibration(app, 10);
        var build = await package.Dotnet(app, cache.Path, "build");
        Assert.True(build.ExitCode == 0, build.Stdout + build.Stderr);
        Assert.False(Directory.Exists(Path.Combine(app.Path, "bin", "Debug", "net10.0", "models")));
        var run = await package.Dotnet(app, cache.Path, "run", "--no-build");
        Assert.Equal(0, run.ExitCode);
        var names = run.Stdout.Trim().Split(',');
        Assert.Contains("models/embedded/model.safetensors", names);
        Assert.Contains("models/embedded/dotquant.json", names);
        Assert.Contains("models/embedded/tokenizer.json", names);

        // Above the size limit embedding is refused with a clear error.
        var tooBig = await package.Dotnet(app, cache.Path, "build", "--no-incremental", "-p:DotQuantMaxEmbedBytes=1000");
        Assert.NotEqual(0, tooBig.ExitCode);
        Assert.Contains("error DQ0190", tooBig.Stdout);
    }

    [Fact]
    public async Task PackedAppCarriesTheModelAsContentFiles()
    {
        using var app = package.CreateApp(Manifest("packed", quantize: "  method: rtn\n  bits: 4\n  group_size: 16\n"));
        using var cache = new TempDir();
        WriteCalibration(app, 10);
        var pack = await package.Dotnet(app, cache.Path, "pack", "-o", app.File("out"));
        Assert.True(pack.ExitCode == 0, pack.Stdout + pack.Stderr);
        using var zip = ZipFile.OpenRead(app.File("out/Contoso.App.1.0.0.nupkg"));
        var entries = zip.Entries.Select(e => e.FullName).ToList();
        Assert.Contains("contentFiles/any/any/models/packed/model.safetensors", entries);
        Assert.Contains("contentFiles/any/any/models/packed/dotquant.json", entries);
        using var nuspec = new StreamReader(zip.Entries.Single(e => e.FullName.EndsWith(".nuspec")).Open());
        string text = nuspec.ReadToEnd();
        Assert.Contains("copyToOutput=\"true\"", text);
        Assert.DoesNotContain("DotQuant.MSBuild", text);        // a build-time dependency only
    }

    [Fact]
    public async Task PackModelsTargetProducesTheModelPackage()
    {
        using var app = package.CreateApp(Manifest("modelpkg", quantize: "  method: rtn\n  bits: 4\n  group_size: 16\n")
            .Replace("  embed: false\n", "  embed: false\n  package: { id: Contoso.Models.Tiny, version: 0.3.0 }\n"));
        using var cache = new TempDir();
        WriteCalibration(app, 10);
        var r = await package.Dotnet(app, cache.Path, "build", "-t:DotQuantPackModels", "-p:PackageOutputPath=" + app.File("models-out"), "-p:DotQuantFragmentBytes=200000");
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        Assert.True(File.Exists(app.File("models-out/Contoso.Models.Tiny.0.3.0.nupkg")));
        Assert.True(File.Exists(app.File("models-out/Contoso.Models.Tiny.Fragment1.0.3.0.nupkg")));
    }

    [Fact]
    public async Task RequireCacheTurnsAMissIntoAnErrorAndTheGateFailsTheBuild()
    {
        using var app = package.CreateApp(Manifest("gated", quantize: "  method: rtn\n  bits: 2\n  group_size: -1\n") +
            $"evaluate:\n  perplexity: {{ data: {SharedPaths.Data("wikitext2", "wiki.test.gptq-joined.txt")}, sequence_length: 256, max_sequences: 4 }}\n" +
            "  gate: { max_perplexity_increase: 5% }\n");
        using var cache = new TempDir();
        WriteCalibration(app, 10);
        var required = await package.Dotnet(app, cache.Path, "build", "-p:DotQuantRequireCache=true");
        Assert.NotEqual(0, required.ExitCode);
        Assert.Contains("error DQ0160", required.Stdout);
        Assert.Empty(Directory.GetDirectories(cache.Path));

        var gated = await package.Dotnet(app, cache.Path, "build");
        Assert.NotEqual(0, gated.ExitCode);
        Assert.Matches(@"quant\.yaml ?: error DQ0170: quality gate failed: perplexity \d+\.\d+ \(float\) -> \d+\.\d+ \(quantized\)", gated.Stdout);

        var disabled = await package.Dotnet(app, cache.Path, "build", "-p:DotQuantEnabled=false");
        Assert.Equal(0, disabled.ExitCode);
        Assert.DoesNotContain("DotQuant:", disabled.Stdout);
    }

    [Fact]
    public async Task OutputAdaptiveBuildReportsProgressWithoutWarnings()
    {
        using var app = package.CreateApp(Manifest("oac", quantize: "  method: gptq\n  bits: 4\n  group_size: 16\n  hessian: output_adaptive\n"));
        using var cache = new TempDir();
        WriteCalibration(app, 10);
        var build = await package.Dotnet(app, cache.Path, "build", "-v", "n");
        Assert.True(build.ExitCode == 0, build.Stdout + build.Stderr);
        // The per-block Hessian timing is progress, not one warning per block.
        Assert.Contains("output-adaptive Hessians in", build.Stdout);
        Assert.DoesNotContain(": warning", build.Stdout);
        Assert.Contains("0 Warning(s)", build.Stdout);
    }

    [Fact]
    public async Task MultiTargetingQuantizesOnce()
    {
        using var app = package.CreateApp(Manifest("multi", quantize: "  method: rtn\n  bits: 4\n  group_size: 16\n"));
        using var cache = new TempDir();
        WriteCalibration(app, 10);
        File.WriteAllText(app.File("app.csproj"), File.ReadAllText(app.File("app.csproj"))
            .Replace("<OutputType>Exe</OutputType>", "")
            .Replace("<TargetFramework>net10.0</TargetFramework>", "<TargetFrameworks>net10.0;netstandard2.0</TargetFrameworks>"));
        // netstandard2.0 needs NETStandard.Library from the public feed.
        File.WriteAllText(app.File("nuget.config"), File.ReadAllText(app.File("nuget.config"))
            .Replace("</packageSources>", "  <add key=\"nuget.org\" value=\"https://api.nuget.org/v3/index.json\" />\n  </packageSources>"));
        File.WriteAllText(app.File("Program.cs"), "public static class Library { }\n");
        var build = await package.Dotnet(app, cache.Path, "build");
        Assert.True(build.ExitCode == 0, build.Stdout + build.Stderr);
        Assert.Equal(1, build.Stdout.Split('\n').Count(l => l.Contains("DotQuant: quantizing as")));
        foreach (var tfm in new[] { "net10.0", "netstandard2.0" })
            Assert.True(File.Exists(Path.Combine(app.Path, "bin", "Debug", tfm, "models", "multi", "model.safetensors")), tfm);
    }

    /// <summary>Ctrl+C while the tool works: the build fails, the tool is gone, no output is left. The tool
    /// is held in a known state rather than raced: the test holds the machine-wide quantization lock
    /// (DOTQUANT_LOCK_FILE), so the tool started by the build waits for it, says so, and cannot finish
    /// before the signal lands, however fast the machine (a run it could complete between its first
    /// progress line and the signal once made this test see a successful build).</summary>
    [Fact]
    public async Task CtrlCStopsTheToolAndLeavesNoPartialOutput()
    {
        if (!OperatingSystem.IsLinux()) return;
        using var app = package.CreateApp(Manifest("slow", quantize: "  method: gptaq\n  bits: 4\n  group_size: 16\n"));
        WriteCalibration(app, 10);
        using var cache = new TempDir();
        string lockFile = app.File("quantize.lock");
        using var held = new FileStream(lockFile, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        // A process started in the background by a non-interactive shell inherits SIGINT ignored, and .NET keeps
        // an inherited SIG_IGN (nohup semantics): tests run that way would hand the build a Ctrl+C it cannot
        // hear. env --default-signal (coreutils) gives the build the disposition a terminal's build has.
        var psi = new System.Diagnostics.ProcessStartInfo("env") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = app.Path };
        foreach (var a in new[] { "--default-signal=INT", "dotnet", "build", "-v", "n" }) psi.ArgumentList.Add(a);
        psi.Environment["NUGET_PACKAGES"] = package.Packages;
        psi.Environment["DOTQUANT_CACHE"] = cache.Path;
        psi.Environment["DOTQUANT_LOCK_FILE"] = lockFile;
        using var build = System.Diagnostics.Process.Start(psi)!;
        var errors = build.StandardError.ReadToEndAsync();           // drained, so a full stderr pipe cannot stall the build
        var output = new System.Text.StringBuilder();
        string? line;
        // Bounded: a build that never reaches the tool's waiting line fails here instead of stalling CI.
        using (var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(5)))
            while ((line = await build.StandardOutput.ReadLineAsync(timeout.Token)) is not null)
            {
                output.AppendLine(line);
                if (line.Contains("another quantization is running")) break;     // the tool is alive and waiting
            }
        Assert.True(line is not null, output.ToString());
        var rest = build.StandardOutput.ReadToEndAsync();
        using (var kill = System.Diagnostics.Process.Start("kill", ["-INT", build.Id.ToString()])) await kill!.WaitForExitAsync();
        // Bounded: a build that does not honour Ctrl+C fails the test (its tree killed first) instead of stalling CI.
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (!build.HasExited && clock.Elapsed < TimeSpan.FromSeconds(60)) await Task.Delay(100);
        bool stopped = build.HasExited;
        if (!stopped) build.Kill(entireProcessTree: true);
        Assert.True(stopped, $"the build outlived Ctrl+C by 60 s:\n{output}");
        output.Append(await rest).Append(await errors);
        await build.WaitForExitAsync();
        Assert.NotEqual(0, build.ExitCode);
        Assert.Contains("MSB5021", output.ToString());            // MSBuild terminated the tool
        // The kill is sent before MSBuild logs MSB5021; the kernel reaps the process right after. Bounded wait
        // for that state (a live tool after 30 s is a failure, not a slow machine).
        bool ToolAlive() => System.IO.Directory.GetDirectories("/proc").Any(d =>
            int.TryParse(Path.GetFileName(d), out _) && File.Exists(Path.Combine(d, "cmdline")) &&
            SafeRead(Path.Combine(d, "cmdline")).Contains(package.Packages) && SafeRead(Path.Combine(d, "cmdline")).Contains("dotnet-quantize"));
        var deadline = System.Diagnostics.Stopwatch.StartNew();
        while (ToolAlive() && deadline.Elapsed < TimeSpan.FromSeconds(30)) await Task.Delay(50);
        Assert.False(ToolAlive(), "dotnet-quantize outlived the cancelled build");
        // No output folder (a killed writer only leaves a hidden temp folder, swept by the next run).
        Assert.Empty(Directory.GetDirectories(cache.Path, "slow", SearchOption.AllDirectories));
    }

    /// <summary>Four builds of four apps with the same manifest, one shared cache, all at once: one
    /// quantizes, the other three wait on the cache entry's lock and take the hit; the entry is whole and
    /// every app ships its bytes. The order is held, not raced: the test holds the machine lock until every
    /// build is waiting (the one that got the entry waits for the machine, the others for the entry).</summary>
    [Fact]
    public async Task FourBuildsOfTheSameManifestAtOnceQuantizeOnceAndShareOneEntry()
    {
        if (!OperatingSystem.IsLinux()) return;
        using var cache = new TempDir();
        var apps = Enumerable.Range(0, 4).Select(_ => package.CreateApp(Manifest("shared"))).ToList();
        try
        {
            foreach (var a in apps) WriteCalibration(a, 10);
            string lockFile = cache.File("quantize.lock");
            var held = new FileStream(lockFile, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            var builds = apps.Select(a =>
            {
                var psi = new System.Diagnostics.ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = a.Path };
                foreach (var arg in new[] { "build", "-v", "n" }) psi.ArgumentList.Add(arg);
                psi.Environment["NUGET_PACKAGES"] = package.Packages;
                psi.Environment["DOTQUANT_CACHE"] = cache.Path;
                psi.Environment["DOTQUANT_LOCK_FILE"] = lockFile;
                return System.Diagnostics.Process.Start(psi)!;
            }).ToList();
            var outputs = builds.Select(_ => new System.Text.StringBuilder()).ToList();
            var waiting = builds.Select(_ => new TaskCompletionSource()).ToList();
            var readers = builds.Select((b, i) => Task.Run(async () =>
            {
                string? line;
                while ((line = await b.StandardOutput.ReadLineAsync()) is not null)
                {
                    lock (outputs[i]) outputs[i].AppendLine(line);
                    if (line.Contains("another quantization is running") || line.Contains("another build is quantizing the same inputs")) waiting[i].TrySetResult();
                }
                waiting[i].TrySetResult();
            })).ToList();
            var all = Task.WhenAll(waiting.Select(w => w.Task));
            Assert.True(await Task.WhenAny(all, Task.Delay(TimeSpan.FromMinutes(5))) == all, "every build should be waiting: " + string.Join("\n----\n", outputs));
            held.Dispose();
            foreach (var b in builds) await b.WaitForExitAsync();
            await Task.WhenAll(readers);
            var logs = outputs.Select(o => o.ToString()).ToList();
            Assert.All(builds, b => Assert.Equal(0, b.ExitCode));
            Assert.Equal(1, logs.Count(l => l.Contains("DotQuant: [")));             // one build quantized
            Assert.Equal(3, logs.Count(l => l.Contains("DotQuant: cache hit")));      // three used its entry
            Assert.Equal(3, logs.Count(l => l.Contains("another build is quantizing the same inputs")));

            string entry = Assert.Single(Directory.GetDirectories(cache.Path).Where(d => !Path.GetFileName(d).StartsWith('.')));
            var sealFiles = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(entry, "shared.entry.json")))!["files"]!.AsObject();
            foreach (var (file, expected) in sealFiles)
            {
                string sealedHash = (string)expected!["sha256"]!;
                Assert.Equal(sealedHash, Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(Path.Combine(entry, "shared", file)))));
                foreach (var a in apps)
                    Assert.Equal(sealedHash, Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(Path.Combine(a.Path, "bin", "Debug", "net10.0", "models", "shared", file)))));
            }
        }
        finally
        {
            foreach (var a in apps) a.Dispose();
        }
    }

    static string SafeRead(string path)
    {
        try { return File.ReadAllText(path); } catch (IOException) { return ""; } catch (UnauthorizedAccessException) { return ""; }
    }
}
