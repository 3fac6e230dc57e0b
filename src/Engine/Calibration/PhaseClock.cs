using System.Diagnostics;

namespace DotQuant.Engine.Calibration;

/// <summary>Where a run's time goes, by phase (issue 13): exclusive wall seconds — time inside a nested
/// phase (the factorization inside a solve) counts for the nested one only, so the phases add up to
/// the run. The clock is ambient for one run (set by <see cref="QuantizeJob"/>); code measures with
/// <c>using (PhaseClock.Measure("xtx")) …</c>, a no-op when no run is being timed.</summary>
public sealed class PhaseClock
{
    static readonly AsyncLocal<PhaseClock?> Ambient = new();
    readonly Dictionary<string, double> _seconds = new(StringComparer.Ordinal);
    readonly Stack<Frame> _open = new();

    sealed class Frame(string phase)
    {
        public readonly string Phase = phase;
        public readonly Stopwatch Watch = Stopwatch.StartNew();
        public double Nested;
    }

    /// <summary>Exclusive seconds per phase, in the order phases were first seen.</summary>
    public IReadOnlyDictionary<string, double> Seconds
    {
        get { lock (_seconds) return new Dictionary<string, double>(_seconds); }
    }

    /// <summary>Times the current run's phases until the returned scope is disposed.</summary>
    public static (PhaseClock Clock, IDisposable Scope) Start()
    {
        var previous = Ambient.Value;
        var clock = new PhaseClock();
        Ambient.Value = clock;
        return (clock, new Restore(previous));
    }

    sealed class Restore(PhaseClock? previous) : IDisposable
    {
        public void Dispose() => Ambient.Value = previous;
    }

    public static Phase Measure(string phase)
    {
        var clock = Ambient.Value;
        if (clock is null) return default;
        lock (clock._seconds) clock._open.Push(new Frame(phase));
        return new Phase(clock);
    }

    void Close()
    {
        lock (_seconds)
        {
            var frame = _open.Pop();
            double elapsed = frame.Watch.Elapsed.TotalSeconds;
            _seconds[frame.Phase] = _seconds.GetValueOrDefault(frame.Phase) + elapsed - frame.Nested;
            if (_open.TryPeek(out var parent)) parent.Nested += elapsed;
        }
    }

    public readonly struct Phase : IDisposable
    {
        readonly PhaseClock? _clock;
        internal Phase(PhaseClock clock) => _clock = clock;
        public void Dispose() => _clock?.Close();
    }
}
