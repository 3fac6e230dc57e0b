using DotQuant.Engine.Manifest;

namespace DotQuant.Tool.Packaging;

/// <summary>Turns a manifest's model reference into a folder: a folder as it is, a package by
/// restoring it from its feed into the cache.</summary>
public static class ModelSource
{
    public static string DefaultCache =>
        Environment.GetEnvironmentVariable("DOTQUANT_CACHE") is { Length: > 0 } c
            ? c
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".dotquant", "cache");

    public static QuantManifest Resolve(QuantManifest m, string? cacheDir, CancellationToken ct = default)
    {
        if (m.ModelPackage is not { } p) return m;
        string folder = Feeds.FetchModelAsync(p.Id, p.Version, p.Source, cacheDir ?? DefaultCache, ct).GetAwaiter().GetResult();
        return m with { ModelPath = folder };
    }
}
