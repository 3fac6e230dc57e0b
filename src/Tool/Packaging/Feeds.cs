using System.IO.Compression;
using DotQuant.Runtime;
using NuGet.Common;
using NuGet.Configuration;
using NuGet.Packaging;
using NuGet.Protocol;
using NuGet.Protocol.Core.Types;
using NuGet.Versioning;

namespace DotQuant.Tool.Packaging;

/// <summary>NuGet feeds through NuGet.Protocol: push a package to a folder or HTTP v3 feed, and
/// fetch a model package into the DotQuant cache (never into the NuGet packages folder).</summary>
public static class Feeds
{
    static SourceRepository Repository(string source) =>
        NuGet.Protocol.Core.Types.Repository.Factory.GetCoreV3(new PackageSource(source));

    public static async Task PushAsync(string package, string source, string? apiKey, CancellationToken ct)
    {
        if (!File.Exists(package))
            throw new DotQuantException(ErrorCodes.FileNotFound, $"package not found: {package}", package);
        if (!source.Contains("://", StringComparison.Ordinal)) Directory.CreateDirectory(source);
        try
        {
            var resource = await Repository(source).GetResourceAsync<PackageUpdateResource>(ct)
                ?? throw new DotQuantException(ErrorCodes.Feed, $"{source} does not accept pushes");
            await resource.Push([Path.GetFullPath(package)], symbolSource: null!, timeoutInSecond: 600, disableBuffering: false,
                getApiKey: _ => apiKey!, getSymbolApiKey: _ => null!, noServiceEndpoint: false, skipDuplicate: false,
                symbolPackageUpdateResource: null!, log: NullLogger.Instance);
        }
        catch (Exception e) when (e is HttpRequestException or InvalidOperationException or FatalProtocolException or IOException)
        {
            throw new DotQuantException(ErrorCodes.Feed, $"push of {Path.GetFileName(package)} to {source} failed: {e.Message}", package, e);
        }
    }

    /// <summary>Downloads and extracts id/version (and its fragments) into CACHE/packages/id/version/
    /// and returns the model folder inside (the one holding config.json).</summary>
    public static async Task<string> FetchModelAsync(string id, string version, string source, string cacheDir, CancellationToken ct)
    {
        if (!NuGetVersion.TryParse(version, out var v))
            throw new DotQuantException(ErrorCodes.Feed, $"'{version}' is not a NuGet version");
        string root = Path.Combine(cacheDir, "packages", id.ToLowerInvariant(), v.ToNormalizedString().ToLowerInvariant());
        string done = Path.Combine(root, ".complete");
        if (!File.Exists(done))
        {
            var finder = await Repository(source).GetResourceAsync<FindPackageByIdResource>(ct)
                ?? throw new DotQuantException(ErrorCodes.Feed, $"{source} is not a NuGet feed");
            using var cache = new SourceCacheContext { NoCache = true };
            AtomicDirectory.Write(root, tmp =>
            {
                Extract(finder, cache, id, v, tmp, ct);
                string? fragments = Directory.GetFiles(tmp, "*.fragments.json", SearchOption.AllDirectories).FirstOrDefault();
                if (fragments is not null) Reassemble(finder, cache, id, v, fragments, tmp, ct);
                File.WriteAllText(Path.Combine(tmp, ".complete"), "");
            }, keepExisting: true);
        }
        var config = Directory.GetFiles(root, "config.json", SearchOption.AllDirectories).Order(StringComparer.Ordinal).FirstOrDefault()
            ?? throw new DotQuantException(ErrorCodes.Feed, $"package {id} {version} holds no model folder (no config.json)");
        return Path.GetDirectoryName(config)!;
    }

    static void Extract(FindPackageByIdResource finder, SourceCacheContext cache, string id, NuGetVersion v, string into, CancellationToken ct)
    {
        using var ms = new MemoryStream();
        bool found = finder.CopyNupkgToStreamAsync(id, v, ms, cache, NullLogger.Instance, ct).GetAwaiter().GetResult();
        if (!found) throw new DotQuantException(ErrorCodes.Feed, $"package {id} {v} is not in the feed");
        ms.Position = 0;
        using var zip = new ZipArchive(ms, ZipArchiveMode.Read);
        foreach (var e in zip.Entries)
        {
            string name = e.FullName.Replace('\\', '/');
            if (name.StartsWith("contentFiles/any/any/", StringComparison.Ordinal)) name = name["contentFiles/any/any/".Length..];
            else if (!name.StartsWith("fragments/", StringComparison.Ordinal) && !name.StartsWith("dotquant/", StringComparison.Ordinal)) continue;
            string target = Path.GetFullPath(Path.Combine(into, name));
            if (!target.StartsWith(Path.GetFullPath(into) + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                throw new DotQuantException(ErrorCodes.Feed, $"package {id} has an entry outside its folder: {e.FullName}");
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            e.ExtractToFile(target, overwrite: true);
        }
    }

    /// <summary>The consumer side of fragment packages, for the tool (the MSBuild side is generated
    /// into the package): fetch each fragment, verify, split the stream back into files.</summary>
    static void Reassemble(FindPackageByIdResource finder, SourceCacheContext cache, string id, NuGetVersion v, string manifestPath, string into, CancellationToken ct)
    {
        var manifest = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(manifestPath))!;
        string name = (string)manifest["name"]!;
        var parts = manifest["parts"]!.AsArray();
        string partsDir = Path.Combine(into, ".parts");
        for (int k = 1; k <= parts.Count; k++)
        {
            Extract(finder, cache, $"{id}.Fragment{k}", v, partsDir, ct);
            string part = Path.Combine(partsDir, "fragments", $"part{k}.bin");
            using var s = File.OpenRead(part);
            if (Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(s)) != (string)parts[k - 1]!["sha256"]!)
                throw new DotQuantException(ErrorCodes.Feed, $"fragment {k} of {id} fails its SHA-256 check");
        }
        var streams = Enumerable.Range(1, parts.Count).Select(k => Path.Combine(partsDir, "fragments", $"part{k}.bin")).ToList();
        using var all = new ConcatenatedStream(streams);
        foreach (var f in manifest["files"]!.AsArray())
        {
            string target = Path.Combine(into, "models", name, (string)f!["path"]!);
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            long size = (long)f["size"]!;
            using (var o = File.Create(target)) ConcatenatedStream.CopyExactly(all, o, size);
            using var check = File.OpenRead(target);
            if (Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(check)) != (string)f["sha256"]!)
                throw new DotQuantException(ErrorCodes.Feed, $"{f["path"]} of {id} fails its SHA-256 check after reassembly");
        }
        Directory.Delete(partsDir, true);
    }
}
