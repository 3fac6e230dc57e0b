using DotQuant.Engine.Calibration;
using DotQuant.Engine.Manifest;

namespace DotQuant.Bench;

/// <summary>A calibration run of a bench, run again once if TorchSharp's finalizer race (Models/Scalars)
/// hits it: runs are deterministic, so the second attempt computes the same output.</summary>
static class ScalarRace
{
    public static JobResult Run(string manifest, string work, Action retried)
    {
        try { return QuantizeJob.Run(ManifestParser.Load(manifest), work); }
        catch (System.Runtime.InteropServices.ExternalException e) when (e.Message.Contains("Scalar", StringComparison.Ordinal) || e.StackTrace?.Contains("Scalar") == true)
        {
            retried();
            Console.WriteLine($"{Path.GetFileName(manifest)}: libtorch Scalar race ({e.Message.Split('\n')[0]}), running again");
            return QuantizeJob.Run(ManifestParser.Load(manifest), work);
        }
    }
}
