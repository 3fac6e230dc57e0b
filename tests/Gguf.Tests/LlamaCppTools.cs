using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using DotQuant.Tests;

namespace DotQuant.Gguf.Tests;

/// <summary>llama.cpp's own command-line tools (../shared/tools/llama.cpp/bin: llama-imatrix,
/// llama-quantize, llama-perplexity), the implementation we did not write for importance matrices. The
/// shared copy stores its library symlinks as small text files naming their targets (the folder went
/// through a copy that does not keep links), so the first use materializes a runnable copy in the temp
/// folder — the ELF files copied, the links made again — keyed by the folder's content, and reuses it.</summary>
static class LlamaCppTools
{
    static readonly Lazy<string> Bin = new(Materialize);

    public static string Folder => Path.Combine(SharedPaths.Root, "tools", "llama.cpp", "bin");

    static string Materialize()
    {
        var files = Directory.GetFiles(Folder).Order(StringComparer.Ordinal).ToArray();
        var key = new StringBuilder();
        foreach (var f in files) key.Append(Path.GetFileName(f)).Append(':').Append(new FileInfo(f).Length).Append(';');
        string hash = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key.ToString())))[..16];
        string target = Path.Combine(Path.GetTempPath(), $"dotquant-llama.cpp-{hash}");
        if (File.Exists(Path.Combine(target, ".complete"))) return target;
        string staging = target + $".tmp-{Environment.ProcessId}";
        if (Directory.Exists(staging)) Directory.Delete(staging, true);
        Directory.CreateDirectory(staging);
        foreach (var f in files)
        {
            string name = Path.GetFileName(f);
            // A link stub: a few bytes of text naming another file of the folder.
            if (new FileInfo(f).Length < 256 && File.ReadAllText(f).Trim() is var linkTarget && files.Any(o => Path.GetFileName(o) == linkTarget))
                File.CreateSymbolicLink(Path.Combine(staging, name), linkTarget);
            else
            {
                File.Copy(f, Path.Combine(staging, name));
                File.SetUnixFileMode(Path.Combine(staging, name), File.GetUnixFileMode(f) | UnixFileMode.UserWrite);
            }
        }
        File.WriteAllText(Path.Combine(staging, ".complete"), "");
        try { Directory.Move(staging, target); }
        catch (IOException) when (File.Exists(Path.Combine(target, ".complete"))) { Directory.Delete(staging, true); }   // another test process won
        return target;
    }

    /// <summary>Runs a tool to completion (bounded by <paramref name="timeoutSeconds"/>; killed after) and
    /// returns its output; a non-zero exit fails with the tool's own messages.</summary>
    public static string Run(string tool, IEnumerable<string> args, int timeoutSeconds = 300)
    {
        var psi = new ProcessStartInfo(Path.Combine(Bin.Value, tool))
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["LD_LIBRARY_PATH"] = Bin.Value;
        psi.Environment["OMP_NUM_THREADS"] = "2";
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeoutSeconds * 1000))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"{tool} did not finish in {timeoutSeconds} s");
        }
        p.WaitForExit();
        string output = stdout.Result + stderr.Result;
        if (p.ExitCode != 0) throw new InvalidOperationException($"{tool} exited with {p.ExitCode}:\n{Tail(output)}");
        return output;
    }

    static string Tail(string s) => s.Length <= 4000 ? s : s[^4000..];
}
