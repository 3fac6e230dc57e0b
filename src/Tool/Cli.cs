using System.CommandLine;
using DotQuant.Runtime;
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
        root.Subcommands.Add(TokenizeCommand.Create(stdout));
        root.Subcommands.Add(ImatrixCommand.Create(stdout));
        root.Subcommands.Add(WorkerCommand.Create(stdout));

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
        using var stop = new Termination(stderr);
        try
        {
            var config = new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false, ProcessTerminationTimeout = null };
            return parse.InvokeAsync(config, stop.Token).GetAwaiter().GetResult();
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
        catch (Exception e) when (DotQuant.Engine.IO.DiskSpace.IsFull(e))
        {
            // A write outside a run's own handling (a report, a pack) met a full disk: say so, not DQ0900.
            stderr.WriteLine($"error {ErrorCodes.DiskFull}: no space left on the device: {e.Message}");
            if (IsDiag(verbosity)) stderr.WriteLine(e);
            return ExitCodes.UserError;
        }
        catch (Exception e)
        {
            stderr.WriteLine($"error {ErrorCodes.Internal}: internal error: {e.GetType().Name}: {e.Message}{(IsDiag(verbosity) ? "" : " (run with -v diag for the stack trace)")}");
            if (IsDiag(verbosity)) stderr.WriteLine(e);
            return ExitCodes.InternalError;
        }
    }

    static bool IsDiag(string v) => v is "diag" or "diagnostic";

    /// <summary>Ctrl+C and SIGTERM cancel the command's token; the work stops at its next check
    /// (every solver column, every batch). A libtorch call cannot be interrupted (an 11008² Cholesky
    /// takes seconds), so if the command has not returned within <see cref="Deadline"/> the process
    /// exits with 130 anyway: every output is written to a temp folder and swapped in atomically, so
    /// nothing half-written is left, and a run's last completed block stays for <c>run --resume</c>.</summary>
    sealed class Termination : IDisposable
    {
        public static readonly TimeSpan Deadline = TimeSpan.FromSeconds(1);
        readonly CancellationTokenSource _cts = new();
        readonly List<System.Runtime.InteropServices.PosixSignalRegistration> _registrations = [];
        readonly TextWriter _stderr;

        public Termination(TextWriter stderr)
        {
            _stderr = stderr;
            foreach (var signal in new[] { System.Runtime.InteropServices.PosixSignal.SIGINT, System.Runtime.InteropServices.PosixSignal.SIGTERM })
            {
                try { _registrations.Add(System.Runtime.InteropServices.PosixSignalRegistration.Create(signal, Handle)); }
                catch (PlatformNotSupportedException) { }
            }
        }

        public CancellationToken Token => _cts.Token;

        void Handle(System.Runtime.InteropServices.PosixSignalContext context)
        {
            context.Cancel = true;
            if (_cts.IsCancellationRequested) return;
            _cts.Cancel();
            _ = Task.Run(async () =>
            {
                await Task.Delay(Deadline);
                lock (_stderr)
                {
                    _stderr.WriteLine("error DQ0901: cancelled");
                    _stderr.Flush();
                }
                // Environment.Exit waits for the runtime to reach a safe point, which a thread inside a
                // long native call delays; _exit ends the process now (files are closed by the kernel).
                if (OperatingSystem.IsWindows()) Environment.Exit(ExitCodes.Cancelled);
                else Exit(ExitCodes.Cancelled);
            });
        }

        [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "_exit")]
        static extern void Exit(int status);

        public void Dispose()
        {
            foreach (var r in _registrations) r.Dispose();
            _cts.Dispose();
        }
    }
}
