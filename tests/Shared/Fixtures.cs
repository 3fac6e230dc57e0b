using System.Diagnostics;
using System.Text;

namespace DotQuant.Tests;

public sealed record ProcessResult(int ExitCode, string Stdout, string Stderr);

public static class Fixtures
{
    /// <summary>Writes a safetensors-like file with the given header JSON and zeroed data bytes,
    /// declaring <paramref name="declaredLength"/> as the header length, as a hostile producer might.</summary>
    public static void WriteRawSafetensors(string path, string header, int dataBytes, ulong? declaredLength = null)
    {
        var h = Encoding.UTF8.GetBytes(header);
        using var fs = File.Create(path);
        fs.Write(BitConverter.GetBytes(declaredLength ?? (ulong)h.Length));
        fs.Write(h);
        fs.Write(new byte[dataBytes]);
    }

    /// <summary>A copy of stories260K's folder that a test may break.</summary>
    public static TempDir CopyOfStories()
    {
        var dir = new TempDir();
        foreach (var f in new[] { "config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors" })
            File.Copy(Path.Combine(SharedPaths.Stories260K, f), dir.File(f));
        return dir;
    }

    /// <summary>Replaces text in a file of a test folder (to break a config on purpose).</summary>
    public static void Edit(string path, string from, string to)
    {
        string text = File.ReadAllText(path);
        if (!text.Contains(from)) throw new InvalidOperationException($"'{from}' is not in {path}");
        File.WriteAllText(path, text.Replace(from, to));
    }

    /// <summary>Runs a program to completion and captures both streams.</summary>
    public static Task<ProcessResult> RunAsync(string file, params string[] args) => RunInAsync(file, null, null, args);

    /// <summary>Runs a program in <paramref name="workingDirectory"/> with extra environment variables (an
    /// empty value removes the variable the child would otherwise inherit).</summary>
    public static async Task<ProcessResult> RunInAsync(string file, IDictionary<string, string>? environment, string? workingDirectory, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        if (workingDirectory is not null) psi.WorkingDirectory = workingDirectory;
        foreach (var (k, v) in environment ?? new Dictionary<string, string>())
        {
            if (v.Length == 0) psi.Environment.Remove(k);
            else psi.Environment[k] = v;
        }
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        return new ProcessResult(p.ExitCode, await stdout, await stderr);
    }
}
