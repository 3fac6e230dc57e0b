using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using DotQuant.Runtime;
using DotQuant.Engine.Evaluation;
using DotQuant.Engine.Formats;

namespace DotQuant.Engine.Calibration;

/// <summary>What a run keeps after each block to continue later: where it is, the writer's state, the
/// layer reports so far and the measurements taken before quantization. The streams and the Hessian
/// source's own state are files beside it.</summary>
public sealed record RunState
{
    public required string Fingerprint { get; init; }
    public required int NextBlock { get; init; }
    public required JsonNode Writer { get; init; }
    public required List<LayerReport> Reports { get; init; }
    public PerplexityResult? Before { get; init; }
    public List<TaskResult> TasksBefore { get; init; } = [];

    internal static readonly JsonSerializerOptions Json = new()
    {
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        WriteIndented = false,
    };
}

/// <summary>The working folder of one run, <c>.NAME.partial-KEY</c> beside the output, keyed by the
/// run's fingerprint: the package being assembled (<c>output/</c>), scratch files (shard bodies, the
/// rotated model, spilled activations) and a resume point after every block (<c>state.json</c> and the
/// streams). A lock file keeps two live runs of the same key apart (the second works in a private
/// folder and cannot be resumed). When the run completes, <c>output/</c> is swapped in atomically and the
/// folder removed; a killed run leaves it for <c>run --resume</c>.</summary>
public sealed class RunFolder : IDisposable
{
    readonly FileStream _lock;
    bool _published;

    RunFolder(string root, FileStream lockFile, bool resumable)
    {
        Root = root;
        _lock = lockFile;
        Resumable = resumable;
        Directory.CreateDirectory(Output);
        Directory.CreateDirectory(Scratch);
    }

    public string Root { get; }
    public string Output => Path.Combine(Root, "output");
    public string Scratch => Path.Combine(Root, "scratch");
    /// <summary>The streams and the Hessian source's state at <paramref name="nextBlock"/>'s input. One folder
    /// per resume point: overwriting a single stream file before state.json was committed let a stop
    /// between the two resume an earlier block with a later block's stream (found by the chaos test).</summary>
    public string StateFolder(int nextBlock) => BlockFolder(Root, nextBlock);

    /// <summary>The folder of the resume point before block <paramref name="nextBlock"/> under <paramref name="parent"/>
    /// (the run's own, or a distributed run's shard states).</summary>
    public static string BlockFolder(string parent, int nextBlock) => Path.Combine(parent, $"block-{nextBlock}");

    /// <summary>Deletes the resume points under <paramref name="parent"/> before block <paramref name="nextBlock"/>.</summary>
    public static void DropBlockFoldersBefore(string parent, int nextBlock)
    {
        foreach (var dir in Directory.GetDirectories(parent, "block-*"))
            if (int.TryParse(Path.GetFileName(dir)[6..], out int b) && b < nextBlock) Directory.Delete(dir, recursive: true);
    }

    public string StreamFile(int nextBlock) => Path.Combine(StateFolder(nextBlock), "stream.safetensors");

    /// <summary>Once state.json names <paramref name="nextBlock"/>, the earlier resume points' folders go.</summary>
    public void DropStatesBefore(int nextBlock) => DropBlockFoldersBefore(Root, nextBlock);
    string StateFile => Path.Combine(Root, "state.json");
    /// <summary>False when another live run holds the keyed folder and this one works privately.</summary>
    public bool Resumable { get; }

    /// <param name="destination">The output folder the run will publish.</param>
    /// <param name="key">Identifies the run's inputs and settings (a resume continues only the same run).</param>
    /// <param name="resume">Keep what an earlier run of the same key left; otherwise start clean.</param>
    public static RunFolder Open(string destination, string key, bool resume)
    {
        string full = Path.GetFullPath(destination);
        string parent = Path.GetDirectoryName(full)!;
        string name = Path.GetFileName(full);
        Directory.CreateDirectory(parent);
        AtomicDirectory.SweepStale(parent, name);
        string root = Path.Combine(parent, $".{name}.partial-{key}");
        // Folders of earlier runs with other settings, not held by a live run, are of no use now.
        foreach (var other in Directory.EnumerateDirectories(parent, $".{name}.partial-*"))
        {
            if (Path.GetFullPath(other) == root) continue;
            var held = TryLock(other, create: false);
            if (held is null && File.Exists(Path.Combine(other, "lock"))) continue;     // a live run
            held?.Dispose();
            AtomicDirectory.TryDelete(other);
        }
        Directory.CreateDirectory(root);
        var lockFile = TryLock(root, create: true);
        if (lockFile is null)
        {
            // The same run is live in another process (two builds sharing a cache): work privately.
            string mine = Path.Combine(parent, $".{name}.partial-{key}-{Environment.ProcessId}-{Guid.NewGuid():N}");
            Directory.CreateDirectory(mine);
            return new RunFolder(mine, TryLock(mine, create: true)!, resumable: false);
        }
        if (!resume)
            foreach (var entry in Directory.EnumerateFileSystemEntries(root).Where(e => Path.GetFileName(e) != "lock"))
            {
                if (Directory.Exists(entry)) AtomicDirectory.TryDelete(entry);
                else File.Delete(entry);
            }
        return new RunFolder(root, lockFile, resumable: true);
    }

    static FileStream? TryLock(string folder, bool create)
    {
        string path = Path.Combine(folder, "lock");
        if (!create && !File.Exists(path)) return null;
        try
        {
            return new FileStream(path, create ? FileMode.OpenOrCreate : FileMode.Open, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>The last resume point of this run, or null (none, another run's, or unreadable).</summary>
    public RunState? LoadState(string fingerprint, Action<string>? warn = null)
    {
        if (!Resumable || !File.Exists(StateFile)) return null;
        try
        {
            var state = JsonSerializer.Deserialize<RunState>(File.ReadAllText(StateFile), RunState.Json);
            if (state?.Fingerprint == fingerprint) return state;
        }
        catch (Exception e) when (e is JsonException or NotSupportedException)
        {
            warn?.Invoke($"the resume point in {Root} is unreadable ({e.Message}); starting from block 0");
        }
        return null;
    }

    /// <summary>Writes the resume point (temp file + rename: a kill leaves the previous one).</summary>
    public void SaveState(RunState state)
    {
        string tmp = StateFile + ".tmp";
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            JsonSerializer.Serialize(fs, state, RunState.Json);
            fs.Flush(true);
        }
        File.Move(tmp, StateFile, overwrite: true);
    }

    /// <summary>Swaps the finished package in at <paramref name="destination"/> and removes the run folder.</summary>
    public void Publish(string destination, bool keepExisting)
    {
        try
        {
            AtomicDirectory.Publish(Output, destination, keepExisting);
        }
        catch (IOException e)
        {
            throw new DotQuantException(ErrorCodes.OutputWrite, $"could not write {destination}: {e.Message}", destination, e);
        }
        _published = true;
    }

    public void Dispose()
    {
        _lock.Dispose();
        // A private folder cannot be resumed; a keyed one stays for `run --resume` unless published.
        if (_published || !Resumable) AtomicDirectory.TryDelete(Root);
    }
}
