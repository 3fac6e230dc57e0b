using System.Diagnostics;
using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

/// <summary>One quantization at a time on the machine when asked: a second run waits with a message
/// naming the first, starts when it ends, and a run that did not ask never waits.</summary>
public class MachineLockTests
{
    [Fact]
    public void A_second_holder_waits_until_the_first_releases()
    {
        using var dir = new TempDir();
        string path = dir.File("quantize.lock");
        var first = MachineLock.Acquire("first", _ => Assert.Fail("the first holder must not wait"), default, path);
        var messages = new List<string>();
        var second = Task.Run(() => MachineLock.Acquire("second", m => { lock (messages) messages.Add(m); }, default, path, TimeSpan.FromMilliseconds(20)));
        Assert.False(second.Wait(500), "the second acquisition must wait while the first holds the lock");
        lock (messages) Assert.Contains(messages, m => m.Contains($"pid {Environment.ProcessId}: first") && m.Contains("DotQuantExclusive=false"));
        first.Dispose();
        Assert.True(second.Wait(5000), "the second acquisition must proceed once the lock is free");
        second.Result.Dispose();
        using var cts = new CancellationTokenSource();
        using var third = MachineLock.Acquire("third", _ => { }, default, path);
        cts.CancelAfter(100);
        Assert.ThrowsAny<OperationCanceledException>(() => MachineLock.Acquire("fourth", _ => { }, cts.Token, path, TimeSpan.FromMilliseconds(20)));
    }

    [Fact]
    public async Task An_exclusive_run_waits_for_the_holder_and_a_plain_run_does_not()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("quant.yaml"),
            $"version: 1\nmodel: {SharedPaths.Stories260K}\ncalibration:\n  data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")}\n  samples: 4\n  sequence_length: 32\n" +
            "quantize:\n  method: gptq\n  bits: 4\n  group_size: 16\noutput:\n  name: out\n");
        string lockFile = dir.File("quantize.lock");
        var env = new Dictionary<string, string> { [MachineLock.PathVariable] = lockFile };
        string tool = Path.Combine(AppContext.BaseDirectory, "dotnet-quantize.dll");
        var held = MachineLock.Acquire("the test", _ => { }, default, lockFile);
        var plain = await Fixtures.RunInAsync("dotnet", env, null, tool, "run", dir.File("quant.yaml"), "--output", dir.File("plain"), "--format", "json");
        Assert.True(plain.ExitCode == 0, plain.Stderr);
        Assert.DoesNotContain("\"waiting\"", plain.Stdout);

        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { tool, "run", dir.File("quant.yaml"), "--output", dir.File("exclusive"), "--format", "json", "--exclusive" }) psi.ArgumentList.Add(a);
        psi.Environment[MachineLock.PathVariable] = lockFile;
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string line = "";
        while (!line.Contains("\"event\":\"waiting\"") && await p.StandardOutput.ReadLineAsync() is { } next) line = next;
        Assert.Contains($"pid {Environment.ProcessId}: the test", line);
        await Task.Delay(500);
        Assert.False(p.HasExited, "the exclusive run must wait while the lock is held");
        Assert.False(Directory.Exists(dir.File("exclusive/out")));
        held.Dispose();
        string rest = await p.StandardOutput.ReadToEndAsync();
        await p.WaitForExitAsync();
        Assert.True(p.ExitCode == 0, await stderr);
        Assert.Contains("\"event\":\"summary\"", rest);
        Assert.True(Directory.Exists(dir.File("exclusive/out")));
    }
}
