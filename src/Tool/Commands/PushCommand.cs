using System.CommandLine;
using DotQuant.Runtime;
using DotQuant.Tool.Packaging;

namespace DotQuant.Tool.Commands;

/// <summary><c>dotnet-quantize push PACKAGE --source FEED [--api-key-env NAME]</c>.</summary>
public static class PushCommand
{
    public static Command Create(TextWriter stdout)
    {
        var packages = new Argument<string[]>("PACKAGE") { Description = ".nupkg file(s): a model package and its fragments", Arity = ArgumentArity.OneOrMore };
        var source = new Option<string>("--source", "-s") { Description = "a folder feed or an HTTP v3 feed URL", Required = true };
        var apiKeyEnv = new Option<string?>("--api-key-env") { Description = "name of the environment variable holding the API key (never pass keys on the command line)" };
        var cmd = new Command("push", "Push model package(s) to a NuGet feed") { packages, source, apiKeyEnv };
        cmd.SetAction(async (parse, ct) =>
        {
            string? key = null;
            if (parse.GetValue(apiKeyEnv) is { } env)
                key = Environment.GetEnvironmentVariable(env) ?? throw new DotQuantException(ErrorCodes.Feed, $"environment variable {env} is not set");
            string feed = parse.GetValue(source)!;
            if (!feed.Contains("://", StringComparison.Ordinal)) feed = Path.GetFullPath(feed);
            foreach (var p in parse.GetValue(packages)!)
            {
                await Feeds.PushAsync(p, feed, key, ct);
                stdout.WriteLine($"pushed {Path.GetFileName(p)} to {feed}");
            }
            return ExitCodes.Ok;
        });
        return cmd;
    }
}
