using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using DotQuant.Runtime;
using NuGet.Packaging;
using NuGet.Versioning;

namespace DotQuant.Tool.Packaging;

/// <summary>Packs a quantized model folder as content NuGet package(s) (deterministic bytes).
/// Small models: one package with the files under <c>contentFiles/any/any/models/&lt;name&gt;/</c>
/// (copied to a consumer's output by NuGet itself). Models above the fragment size (nuget.org
/// refuses packages above 250 MB): the files are concatenated and cut into fragment packages
/// <c>&lt;id&gt;.Fragment&lt;k&gt;</c>; the main package depends on them and carries a SHA-256 manifest and
/// buildTransitive targets that reassemble and verify the files on the consumer's first build into
/// the DotQuant cache (never inside the NuGet packages folder) and copy them to the output.</summary>
public static class ModelPackageWriter
{
    public const long DefaultFragmentBytes = 240_000_000;

    public sealed record Result(IReadOnlyList<string> Packages, bool Fragmented);

    public static Result Write(string modelFolder, string name, string id, string version, string? authors, string outputDir, long fragmentBytes)
    {
        if (!Directory.Exists(modelFolder))
            throw new DotQuantException(ErrorCodes.FileNotFound, $"no quantized model at {modelFolder}; run `dotnet quantize run` first", modelFolder);
        NuGetVersion nuVersion;
        try { nuVersion = NuGetVersion.Parse(version); }
        catch (ArgumentException) { throw new DotQuantException(ErrorCodes.ManifestValue, $"output.package.version '{version}' is not a NuGet version"); }
        Directory.CreateDirectory(outputDir);
        var files = Directory.GetFiles(modelFolder, "*", SearchOption.AllDirectories)
            .Select(f => (Full: f, Relative: Path.GetRelativePath(modelFolder, f).Replace('\\', '/')))
            .Where(f => !f.Relative.StartsWith('.'))
            .OrderBy(f => f.Relative, StringComparer.Ordinal).ToList();
        long total = files.Sum(f => new FileInfo(f.Full).Length);
        var written = new List<string>();

        if (total <= fragmentBytes)
        {
            var b = NewBuilder(id, nuVersion, authors, $"Quantized model '{name}' (DotQuant): files under models/{name}/ in the consumer's output.");
            b.ContentFiles.Add(new ManifestContentFiles { Include = $"any/any/models/{name}/**", BuildAction = "None", CopyToOutput = "true", Flatten = "false" });
            foreach (var f in files)
                b.Files.Add(new PhysicalPackageFile { SourcePath = f.Full, TargetPath = $"contentFiles/any/any/models/{name}/{f.Relative}" });
            written.Add(Save(b, outputDir));
            return new Result(written, false);
        }

        // Fragments: one logical stream (files in ordinal order), cut every fragmentBytes.
        var fileEntries = new JsonArray();
        foreach (var f in files)
            fileEntries.Add(new JsonObject { ["path"] = f.Relative, ["size"] = new FileInfo(f.Full).Length, ["sha256"] = Sha256(f.Full) });
        int parts = (int)((total + fragmentBytes - 1) / fragmentBytes);
        var partEntries = new JsonArray();
        using (var stream = new ConcatenatedStream(files.Select(f => f.Full).ToList()))
        {
            for (int k = 1; k <= parts; k++)
            {
                long size = Math.Min(fragmentBytes, total - (k - 1) * fragmentBytes);
                string tmp = Path.Combine(outputDir, $".{id}.part{k}.tmp-{Environment.ProcessId}");
                string hash;
                using (var part = File.Create(tmp))
                using (var sha = SHA256.Create())
                using (var crypto = new CryptoStream(part, sha, CryptoStreamMode.Write))
                {
                    ConcatenatedStream.CopyExactly(stream, crypto, size);
                    crypto.FlushFinalBlock();
                    hash = Convert.ToHexStringLower(sha.Hash!);
                }
                string fragmentId = $"{id}.Fragment{k}";
                var fb = NewBuilder(fragmentId, nuVersion, authors, $"Fragment {k} of {parts} of quantized model '{name}' ({id}); installed by {id}.");
                fb.Files.Add(new PhysicalPackageFile { SourcePath = tmp, TargetPath = $"fragments/part{k}.bin" });
                written.Add(Save(fb, outputDir));
                File.Delete(tmp);
                partEntries.Add(new JsonObject { ["package"] = fragmentId, ["size"] = size, ["sha256"] = hash });
            }
        }
        var manifest = new JsonObject { ["format"] = "dotquant-fragments", ["version"] = 1, ["name"] = name, ["files"] = fileEntries, ["parts"] = partEntries };
        var main = NewBuilder(id, nuVersion, authors, $"Quantized model '{name}' (DotQuant), {parts} fragments reassembled on first build.");
        main.DependencyGroups.Add(new PackageDependencyGroup(NuGet.Frameworks.NuGetFramework.AnyFramework,
            Enumerable.Range(1, parts).Select(k => new NuGet.Packaging.Core.PackageDependency($"{id}.Fragment{k}", new VersionRange(nuVersion, true, nuVersion, true)))));
        main.Files.Add(Memory($"dotquant/{name}.fragments.json", manifest.ToJsonString(new() { WriteIndented = true })));
        main.Files.Add(Memory($"buildTransitive/{id}.targets", ReassemblyTargets(id, nuVersion.ToNormalizedString(), name, parts)));
        written.Insert(0, Save(main, outputDir));
        return new Result(written, true);
    }

    static PackageBuilder NewBuilder(string id, NuGetVersion version, string? authors, string description)
    {
        var b = new PackageBuilder(deterministic: true) { Id = id, Version = version, Description = description };
        b.Authors.Add(string.IsNullOrWhiteSpace(authors) ? "DotQuant" : authors);
        return b;
    }

    static string Save(PackageBuilder b, string outputDir)
    {
        string path = Path.Combine(outputDir, $"{b.Id}.{b.Version!.ToNormalizedString()}.nupkg");
        string tmp = path + $".tmp-{Environment.ProcessId}";
        using (var fs = File.Create(tmp)) b.Save(fs);
        FixTimestamps(tmp);
        File.Move(tmp, path, overwrite: true);
        return path;
    }

    static readonly DateTimeOffset FixedTime = new(2000, 1, 1, 0, 0, 0, TimeSpan.Zero);

    /// <summary>NuGet stamps zip entries with the current time even in deterministic mode; rewrite
    /// every entry (same order, same compression) with one fixed timestamp so identical inputs give
    /// identical package bytes on any day.</summary>
    static void FixTimestamps(string nupkg)
    {
        var entries = new List<(string Name, byte[] Data)>();
        using (var zip = System.IO.Compression.ZipFile.OpenRead(nupkg))
            foreach (var e in zip.Entries)
            {
                using var s = e.Open();
                using var ms = new MemoryStream();
                s.CopyTo(ms);
                entries.Add((e.FullName, ms.ToArray()));
            }
        using var fs = File.Create(nupkg);
        using var output = new System.IO.Compression.ZipArchive(fs, System.IO.Compression.ZipArchiveMode.Create);
        foreach (var (name, data) in entries)
        {
            var entry = output.CreateEntry(name, System.IO.Compression.CompressionLevel.Optimal);
            entry.LastWriteTime = FixedTime;
            using var w = entry.Open();
            w.Write(data);
        }
    }

    static IPackageFile Memory(string target, string text)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        return new InMemoryFile(target, bytes);
    }

    sealed class InMemoryFile(string path, byte[] bytes) : IPackageFile
    {
        public string Path => path;
        public string EffectivePath => path;
        public NuGet.Frameworks.NuGetFramework? NuGetFramework => null;
        public System.Runtime.Versioning.FrameworkName? TargetFramework => null;
        public DateTimeOffset LastWriteTime => DateTimeOffset.UnixEpoch;
        public Stream GetStream() => new MemoryStream(bytes, false);
    }

    static string Sha256(string file)
    {
        using var fs = File.OpenRead(file);
        return Convert.ToHexStringLower(SHA256.HashData(fs));
    }

    /// <summary>The consumer-side targets of a fragmented model package (see the class comment).</summary>
    static string ReassemblyTargets(string id, string version, string name, int parts)
    {
        string lower = id.ToLowerInvariant();
        var partItems = string.Join("\n", Enumerable.Range(1, parts).Select(k =>
            $"    <_DotQuantPart_{Safe(id)} Include=\"$([MSBuild]::EnsureTrailingSlash('$(NuGetPackageRoot)')){lower}.fragment{k}/{version.ToLowerInvariant()}/fragments/part{k}.bin\" />"));
        return $$"""
<Project>
  <!-- Generated by dotnet-quantize pack: reassembles the quantized model '{{name}}' from {{parts}}
       fragment packages into the DotQuant cache on the first build, verifying every SHA-256, then
       copies it to the output under models/{{name}}/. -->
  <PropertyGroup>
    <DotQuantCacheDir Condition="'$(DotQuantCacheDir)' == '' and '$(DOTQUANT_CACHE)' != ''">$(DOTQUANT_CACHE)</DotQuantCacheDir>
    <DotQuantCacheDir Condition="'$(DotQuantCacheDir)' == ''">$([System.IO.Path]::Combine($([System.Environment]::GetFolderPath(SpecialFolder.UserProfile)), '.dotquant', 'cache'))</DotQuantCacheDir>
    <_DotQuantModelDir_{{Safe(id)}}>$([System.IO.Path]::Combine($(DotQuantCacheDir), 'packages', '{{lower}}', '{{version.ToLowerInvariant()}}', '{{name}}'))</_DotQuantModelDir_{{Safe(id)}}>
  </PropertyGroup>
  <ItemGroup>
{{partItems}}
  </ItemGroup>

  <UsingTask TaskName="DotQuantReassemble_{{Safe(id)}}" TaskFactory="RoslynCodeTaskFactory" AssemblyFile="$(MSBuildToolsPath)/Microsoft.Build.Tasks.Core.dll">
    <ParameterGroup>
      <Manifest ParameterType="System.String" Required="true" />
      <Parts ParameterType="Microsoft.Build.Framework.ITaskItem[]" Required="true" />
      <Destination ParameterType="System.String" Required="true" />
    </ParameterGroup>
    <Task>
      <Using Namespace="System.IO" />
      <Using Namespace="System.Security.Cryptography" />
      <Using Namespace="System.Text.RegularExpressions" />
      <Code Type="Fragment" Language="cs"><![CDATA[
if (File.Exists(Path.Combine(Destination, ".complete"))) return true;
string text = File.ReadAllText(Manifest);
var files = Regex.Matches(text, "\"path\": \"([^\"]+)\",\\s*\"size\": (\\d+),\\s*\"sha256\": \"([0-9a-f]+)\"");
var parts = Regex.Matches(text, "\"package\": \"[^\"]+\",\\s*\"size\": (\\d+),\\s*\"sha256\": \"([0-9a-f]+)\"");
if (parts.Count != Parts.Length) { Log.LogError(null, "DQ0195", null, Manifest, 0, 0, 0, 0, "expected " + parts.Count + " fragments, found " + Parts.Length); return false; }
for (int k = 0; k < Parts.Length; k++)
{
    string p = Parts[k].ItemSpec;
    if (!File.Exists(p)) { Log.LogError(null, "DQ0195", null, Manifest, 0, 0, 0, 0, "fragment " + (k + 1) + " is missing: " + p); return false; }
    using (var s = File.OpenRead(p))
    using (var sha = SHA256.Create())
    {
        string h = BitConverter.ToString(sha.ComputeHash(s)).Replace("-", "").ToLowerInvariant();
        if (h != parts[k].Groups[2].Value) { Log.LogError(null, "DQ0195", null, Manifest, 0, 0, 0, 0, "fragment " + (k + 1) + " fails its SHA-256 check"); return false; }
    }
}
string parent = Path.GetDirectoryName(Destination);
Directory.CreateDirectory(parent);
string tmp = Destination + ".tmp-" + System.Diagnostics.Process.GetCurrentProcess().Id + "-" + Guid.NewGuid().ToString("N");
Directory.CreateDirectory(tmp);
int part = 0; Stream current = File.OpenRead(Parts[0].ItemSpec);
try
{
    var buffer = new byte[1 << 20];
    foreach (Match f in files)
    {
        string target = Path.Combine(tmp, f.Groups[1].Value);
        Directory.CreateDirectory(Path.GetDirectoryName(target));
        long left = long.Parse(f.Groups[2].Value);
        using (var o = File.Create(target))
        using (var sha = SHA256.Create())
        {
            while (left > 0)
            {
                int n = current.Read(buffer, 0, (int)Math.Min(buffer.Length, left));
                if (n == 0) { current.Dispose(); part++; current = File.OpenRead(Parts[part].ItemSpec); continue; }
                o.Write(buffer, 0, n); sha.TransformBlock(buffer, 0, n, null, 0); left -= n;
            }
            sha.TransformFinalBlock(buffer, 0, 0);
            string h = BitConverter.ToString(sha.Hash).Replace("-", "").ToLowerInvariant();
            if (h != f.Groups[3].Value) { Log.LogError(null, "DQ0195", null, Manifest, 0, 0, 0, 0, f.Groups[1].Value + " fails its SHA-256 check after reassembly"); Directory.Delete(tmp, true); return false; }
        }
    }
}
finally { current.Dispose(); }
File.WriteAllText(Path.Combine(tmp, ".complete"), "");
try { Directory.Move(tmp, Destination); }
catch (IOException) { if (!File.Exists(Path.Combine(Destination, ".complete"))) throw; Directory.Delete(tmp, true); }
Log.LogMessage(MessageImportance.High, "DotQuant: reassembled {{name}} from " + Parts.Length + " fragments into " + Destination);
]]></Code>
    </Task>
  </UsingTask>

  <Target Name="_DotQuantReassemble_{{Safe(id)}}" BeforeTargets="AssignTargetPaths" Condition="'$(DesignTimeBuild)' != 'true'">
    <DotQuantReassemble_{{Safe(id)}} Manifest="$(MSBuildThisFileDirectory)../dotquant/{{name}}.fragments.json" Parts="@(_DotQuantPart_{{Safe(id)}})" Destination="$(_DotQuantModelDir_{{Safe(id)}})" />
    <ItemGroup>
      <_DotQuantPackagedFile_{{Safe(id)}} Include="$(_DotQuantModelDir_{{Safe(id)}})/**/*" Exclude="$(_DotQuantModelDir_{{Safe(id)}})/.complete" />
      <None Include="@(_DotQuantPackagedFile_{{Safe(id)}})" Link="models/{{name}}/%(RecursiveDir)%(Filename)%(Extension)" CopyToOutputDirectory="PreserveNewest" Visible="false" />
    </ItemGroup>
  </Target>
</Project>
""";
    }

    static string Safe(string id) => new(id.Select(c => char.IsLetterOrDigit(c) ? c : '_').ToArray());
}
