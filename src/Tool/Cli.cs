using System.CommandLine;
using DotQuant.Engine.Diagnostics;
using DotQuant.Tool.Commands;

namespace DotQuant.Tool;

/// <summary>Exit codes of DESIGN.md §4.</summary>
public static class ExitCodes
{
    public const int Ok = 0, UserError = 1, GateFailed = 2, InternalError = 3, Cancelled = 130;
}

/// <summary>Command tree and the one place errors become exit codes: a DotQuantException is a
/// one-line DQ message and exit 1; anything else is DQ0900 and exit 3. Stack traces only at
/// <c>-v diag</c>.</summary>
public static class Cli
{
    public static readonly Option<string> Verbosity = new Option<string>("--verbosity", "-v")
    {
        Description = "q[uiet], m[inimal], n[ormal], d[etailed] or diag[nostic]",
        DefaultValueFactory = _ => "n",
        Recursive = true,
    }.AcceptOnlyFromAmong("q", "quiet", "m", "minimal", "n", "normal", "d", "detailed", "diag", "diagnostic");

    public static readonly Option<int?> Threads = new("--threads")
    {
        Description = "CPU threads for libtorch (default: all cores)",
        Recursive = true,
    };

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var root = new RootCommand("dotnet-quantize: post-training quantization of LLMs for .NET");
        root.Options.Add(Verbosity);
        root.Options.Add(Threads);
        root.Subcommands.Add(RunCommand.Create(stdout, stderr, ReferenceEquals(stdout, Console.Out) && !Console.IsOutputRedirected));
        root.Subcommands.Add(FingerprintCommand.Create(stdout));
        root.Subcommands.Add(PackCommand.Create(stdout));
        root.Subcommands.Add(PushCommand.Create(stdout));
        root.Subcommands.Add(EvalCommand.Create(stdout));
        root.Subcommands.Add(InspectCommand.Create(stdout));

        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            stderr.WriteLine($"error {ErrorCodes.Usage}: {string.Join("; ", parse.Errors.Select(e => e.Message))} (see --help)");
            return ExitCodes.UserError;
        }
        var verbosity = parse.GetValue(Verbosity) ?? "n";
        if (parse.GetValue(Threads) is int threads)
        {
            if (threads < 1)
            {
                stderr.WriteLine($"error {ErrorCodes.Usage}: --threads must be at least 1");
                return ExitCodes.UserError;
            }
            TorchSharp.torch.set_num_threads(threads);
        }
        try
        {
            return parse.Invoke(new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false });
        }
        catch (DotQuantException e)
        {
            stderr.WriteLine(e.Format());
            if (IsDiag(verbosity)) stderr.WriteLine(e);
            return ExitCodes.UserError;
        }
        catch (OperationCanceledException)
        {
            stderr.WriteLine("error DQ0901: cancelled");
            return ExitCodes.Cancelled;
        }
        catch (Exception e)
        {
            stderr.WriteLine($"error {ErrorCodes.Internal}: internal error: {e.GetType().Name}: {e.Message}{(IsDiag(verbosity) ? "" : " (run with -v diag for the stack trace)")}");
            if (IsDiag(verbosity)) stderr.WriteLine(e);
            return ExitCodes.InternalError;
        }
    }

    static bool IsDiag(string v) => v is "diag" or "diagnostic";
}
