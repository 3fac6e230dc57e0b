using System.Diagnostics;
using System.Globalization;

/// <summary>Loaded by the runtime before Main (DOTNET_STARTUP_HOOKS): a thread forces garbage collections
/// and runs the finalizers, over and over, for the whole life of the process. With a tiny gen0 budget
/// (DOTNET_GCgen0size, set by the harness) every managed object a native call still reads is, at some
/// point, collected under it if nothing keeps it alive: the way TorchSharp's temporary Scalars used to
/// crash a run once in a long while, made to happen at once. At exit it reports how many collections it
/// forced and how many rooted Scalars the engine holds (its cache must stay small).</summary>
internal static class StartupHook
{
    public static void Initialize()
    {
        long collections = 0;
        var clock = Stopwatch.StartNew();
        var thread = new Thread(() =>
        {
            while (true)
            {
                // Gen0 collections catch the young temporaries a native call is reading; a full one now
                // and then catches whatever got promoted.
                GC.Collect(Interlocked.Increment(ref collections) % 64 == 0 ? 2 : 0, GCCollectionMode.Forced, blocking: true);
                GC.WaitForPendingFinalizers();
                Thread.Yield();
            }
        }) { IsBackground = true, Name = "gc-stress", Priority = ThreadPriority.AboveNormal };
        thread.Start();
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            object? cached = Type.GetType("DotQuant.Engine.Torch.Scalars, DotQuant.Engine")?.GetProperty("Cached")?.GetValue(null);
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"gc-stress: {Interlocked.Read(ref collections)} forced collections in {clock.Elapsed.TotalSeconds:F1} s, {cached ?? -1} rooted Scalars"));
        };
    }
}
