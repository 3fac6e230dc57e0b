using System.CommandLine;
using System.Text.Json.Nodes;
using DotQuant.Runtime;
using DotQuant.Engine.Manifest;
using DotQuant.Tool.Packaging;

namespace DotQuant.Tool.Commands;

/// <summary><c>dotnet-quantize pack quant.yaml</c>: the last run's output as content NuGet package(s).</summary>
public static class PackCommand
{
    public static Command Create(TextWriter stdout)
    {
        var manifest = new Argument<string>("MANIFEST") { Description = "quant.yaml with an output.package section" };
        var model = new Option<string?>("--model") { Description = "the quantized folder (default: the run output, MANIFEST's folder/<output.name>)" };
        var output = new Option<string?>("--output", "-o") { Description = "folder for the .nupkg files (default: MANIFEST's folder)" };
        var fragment = new Option<long>("--fragment-size")
        {
            Description = $"split models above this many bytes into fragment packages (default {ModelPackageWriter.DefaultFragmentBytes:N0}; nuget.org's limit is 250 MB)",
            DefaultValueFactory = _ => ModelPackageWriter.DefaultFragmentBytes,
        };
        var format = OutputFormat.Create();
        var cmd = new Command("pack", "Pack a quantized model as content NuGet package(s)") { manifest, model, output, fragment, format };
        cmd.SetAction(parse =>
        {
            var m = ManifestParser.Load(parse.GetValue(manifest)!);
            if (m.Output.PackageId is null || m.Output.PackageVersion is null)
                throw new DotQuantException(ErrorCodes.ManifestMissing, "pack needs output.package { id, version } in the manifest", m.Path);
            long size = parse.GetValue(fragment);
            if (size <= 0) throw new DotQuantException(ErrorCodes.Usage, "--fragment-size must be positive");
            string dir = Path.GetDirectoryName(m.Path)!;
            string folder = Path.GetFullPath(parse.GetValue(model) ?? Path.Combine(dir, m.Output.Name));
            var r = ModelPackageWriter.Write(folder, m.Output.Name, m.Output.PackageId, m.Output.PackageVersion, m.Output.PackageAuthors,
                Path.GetFullPath(parse.GetValue(output) ?? dir), size);
            if (parse.GetValue(format) == "json")
                OutputFormat.WriteJson(stdout, new JsonObject
                {
                    ["packages"] = new JsonArray(r.Packages.Select(p => (JsonNode)p).ToArray()),
                    ["fragmented"] = r.Fragmented,
                });
            else
                foreach (var p in r.Packages) stdout.WriteLine($"created {p}");
            return ExitCodes.Ok;
        });
        return cmd;
    }
}
