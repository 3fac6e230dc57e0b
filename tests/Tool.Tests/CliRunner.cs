using System.Text.Json;
using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

public sealed record CliResult(int ExitCode, string Stdout, string Stderr)
{
    public JsonElement LastJson() => JsonDocument.Parse(Stdout.TrimEnd().Split('\n')[^1]).RootElement;
}

public static class CliRunner
{
    /// <summary>Runs the command tree in-process (fast, same code as the executable's Main).</summary>
    public static CliResult Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Cli.Run(args, o, e);
        return new CliResult(code, o.ToString(), e.ToString());
    }

    /// <summary>Runs the built dotnet-quantize.dll in a child process, as a user would.</summary>
    public static async Task<CliResult> RunProcessAsync(params string[] args)
    {
        var r = await Fixtures.RunAsync("dotnet", [Path.Combine(AppContext.BaseDirectory, "dotnet-quantize.dll"), .. args]);
        return new CliResult(r.ExitCode, r.Stdout, r.Stderr);
    }
}
