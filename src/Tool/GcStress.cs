using System.Diagnostics;
using System.Globalization;

namespace DotQuant.Tool;

/// <summary>A reliability test mode (DOTQUANT_GC_STRESS=1): a thread forces garbage collections and runs
/// the finalizers, over and over, for the whole life of the process, while the run does its work. With a
/// tiny gen0 budget (DOTNET_GCgen0size, set by the harness before the runtime starts) every managed object
/// a native call still needs is, at some point, collected under it if nothing keeps it alive: the way
/// TorchSharp's temporary Scalars used to crash a run once in a long while, made to happen at once. At
/// exit it reports how many collections it forced and how many rooted Scalars exist (their cache must
/// stay small: only constants and configuration values belong in it).</summary>
static class GcStress
{
    public const string Variable = "DOTQUANT_GC_STRESS";

    public static void StartIfAsked(TextWriter stderr)
    {
        if (Environment.GetEnvironmentVariable(Variable) is not { Length: > 0 } value || value == "0") return;
        long collections = 0;
        var clock = Stopwatch.StartNew();
        var thread = new Thread(() =>
        {
            while (true)
            {
                // Gen0 collections catch the young temporaries a native call is reading; a full one now and
                // then catches whatever got promoted.
                GC.Collect(Interlocked.Increment(ref collections) % 64 == 0 ? 2 : 0, GCCollectionMode.Forced, blocking: true);
                GC.WaitForPendingFinalizers();
                Thread.Yield();
            }
        }) { IsBackground = true, Name = "gc-stress", Priority = ThreadPriority.AboveNormal };
        thread.Start();
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
            stderr.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"gc-stress: {Interlocked.Read(ref collections)} forced collections in {clock.Elapsed.TotalSeconds:F1} s, {DotQuant.Engine.Torch.Scalars.Cached} rooted Scalars"));
    }
}
