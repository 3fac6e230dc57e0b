using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using DotQuant.Runtime;
using DotQuant.Engine.IO;

namespace DotQuant.Tool.Caching;

/// <summary>One entry of the content-addressed cache: <c>CACHE/KEY/NAME/</c>, the output folder a run
/// published, and beside it <c>NAME.entry.json</c>, its seal — every file's length and SHA-256, written
/// before the folder is swapped in (so a folder that is visible always has its seal). An entry is used
/// only after every file is read back against the seal: a corrupted, truncated, missing or extra file is
/// reported (DQ0161), the entry is moved aside and the run computes it again, so a damaged cache is never
/// shipped into an app. Entries are immutable once published; the only change — moving a damaged one
/// aside — happens under the entry's lock, which is also what makes concurrent builds of the same
/// manifest compute it once.</summary>
public sealed class CacheEntry(string keyFolder, string name)
{
    const int SealVersion = 1;

    public string Folder { get; } = Path.Combine(keyFolder, name);
    public string SealFile { get; } = Path.Combine(keyFolder, name + ".entry.json");
    public string LockFile { get; } = Path.Combine(keyFolder, name + ".lock");

    public enum State { Missing, Good, Damaged }

    /// <summary>Reads every file of the entry against its seal. <paramref name="problem"/> says what is wrong with a damaged one.</summary>
    public State Verify(out string problem)
    {
        problem = "";
        if (!Directory.Exists(Folder)) return State.Missing;
        JsonObject? seal;
        try
        {
            seal = JsonNode.Parse(File.ReadAllText(SealFile)) as JsonObject;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException)
        {
            problem = $"its seal {Path.GetFileName(SealFile)} is missing or unreadable ({e.Message})";
            return State.Damaged;
        }
        if (seal?["files"] is not JsonObject files || (int?)seal["version"] != SealVersion)
        {
            problem = $"its seal {Path.GetFileName(SealFile)} is not a version-{SealVersion} seal";
            return State.Damaged;
        }
        var present = Files(Folder);
        foreach (var extra in present.Where(f => !files.ContainsKey(f)))
        {
            problem = $"{extra} is not in its seal";
            return State.Damaged;
        }
        foreach (var (file, expected) in files)
        {
            string path = Path.Combine(Folder, file);
            if (!File.Exists(path))
            {
                problem = $"{file} is missing";
                return State.Damaged;
            }
            long length = new FileInfo(path).Length;
            if (length != (long?)expected?["bytes"])
            {
                problem = $"{file} is {length:N0} bytes, sealed at {(long?)expected?["bytes"]:N0} (truncated or replaced)";
                return State.Damaged;
            }
            string digest;
            try
            {
                digest = Sha256(path);
            }
            catch (IOException e)
            {
                problem = $"{file} cannot be read ({e.Message})";
                return State.Damaged;
            }
            if (digest != (string?)expected?["sha256"])
            {
                problem = $"{file} does not match its SHA-256 (sealed {(string?)expected?["sha256"]}, found {digest})";
                return State.Damaged;
            }
        }
        return State.Good;
    }

    /// <summary>Writes the seal of <paramref name="staged"/>, the folder about to become this entry
    /// (temp file + rename: a reader sees the previous seal or this one, whole).</summary>
    public void Seal(string staged)
    {
        var files = new JsonObject();
        foreach (var file in Files(staged))
        {
            string path = Path.Combine(staged, file);
            files[file] = new JsonObject { ["bytes"] = new FileInfo(path).Length, ["sha256"] = Sha256(path) };
        }
        var seal = new JsonObject { ["version"] = SealVersion, ["files"] = files };
        Directory.CreateDirectory(Path.GetDirectoryName(SealFile)!);
        string tmp = SealFile + $".tmp-{Environment.ProcessId}-{Guid.NewGuid():N}";
        try
        {
            File.WriteAllText(tmp, seal.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            File.Move(tmp, SealFile, overwrite: true);
        }
        catch (IOException e)
        {
            try { File.Delete(tmp); } catch (IOException) { }
            throw new DotQuantException(DiskSpace.IsFull(e) ? ErrorCodes.DiskFull : ErrorCodes.OutputWrite,
                $"could not write the cache seal {SealFile}: {e.Message}", SealFile, e);
        }
    }

    /// <summary>Moves a damaged entry out of the way (a rename, then a delete): the next run computes it
    /// again. Call under <see cref="LockFile"/>.</summary>
    public void MoveAside()
    {
        string parent = Path.GetDirectoryName(Folder)!;
        string aside = Path.Combine(parent, $".{Path.GetFileName(Folder)}.damaged-{Environment.ProcessId}-{Guid.NewGuid():N}");
        try
        {
            if (Directory.Exists(Folder)) Directory.Move(Folder, aside);
            File.Delete(SealFile);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        try { if (Directory.Exists(aside)) Directory.Delete(aside, true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>Relative paths of every file under <paramref name="folder"/>, '/'-separated, ordinal order.</summary>
    static List<string> Files(string folder) =>
        Directory.EnumerateFiles(folder, "*", SearchOption.AllDirectories)
            .Select(f => Path.GetRelativePath(folder, f).Replace('\\', '/'))
            .Order(StringComparer.Ordinal).ToList();

    static string Sha256(string path)
    {
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.SequentialScan);
        return Convert.ToHexStringLower(SHA256.HashData(fs));
    }
}
