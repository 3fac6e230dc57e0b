using System.CommandLine;
using System.Text.Json.Nodes;
using DotQuant.Engine.Calibration;
using DotQuant.Engine.Manifest;
using DotQuant.Tool.Packaging;

namespace DotQuant.Tool.Commands;

/// <summary><c>dotnet-quantize fingerprint quant.yaml</c>: the content hash of everything a run
/// reads (the build integration's cache key) and the files behind it. Touches no tensor math (libtorch
/// is loaded only for its thread count, part of the key: Torch/Numerics).</summary>
public static class FingerprintCommand
{
    public static Command Create(TextWriter stdout)
    {
        var manifest = new Argument<string>("MANIFEST") { Description = "quant.yaml" };
        var format = OutputFormat.Create();
        var cmd = new Command("fingerprint", "Print the content hash of a manifest's inputs (model, calibration data, settings, engine version)") { manifest, format };
        cmd.SetAction(parse =>
        {
            var m = ModelSource.Resolve(ManifestParser.Load(parse.GetValue(manifest)!), null);
            string fp = QuantizeJob.Fingerprint(m);
            if (parse.GetValue(format) == "json")
                OutputFormat.WriteJson(stdout, new JsonObject
                {
                    ["fingerprint"] = fp,
                    ["key"] = RunCommand.CacheKey(fp),
                    ["numerics"] = DotQuant.Engine.Torch.Numerics.Key(TorchSharp.torch.get_num_threads()),
                    ["name"] = m.Output.Name,
                    ["embed"] = m.Output.Embed,
                    ["inputs"] = new JsonArray(QuantizeJob.InputFiles(m).Select(f => (JsonNode)f).ToArray()),
                });
            else
                stdout.WriteLine(fp);
            return ExitCodes.Ok;
        });
        return cmd;
    }
}
