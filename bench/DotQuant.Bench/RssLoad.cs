using System.Diagnostics;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Bench;

/// <summary>Peak resident memory of loading a checkpoint, measured in a fresh child process.</summary>
static class RssLoad
{
    public sealed record Result(double Seconds, long PeakBytes, long BaselineBytes);

    public static Result Measure(string dir, string mode)
    {
        var parts = DotQuant.Bench.Child.Run(true, "rss-load", dir, mode).Split(' ');
        return new Result(double.Parse(parts[0]), long.Parse(parts[1]), long.Parse(parts[2]));
    }

    public static int Child(string dir, string mode)
    {
        using (ones(1)) { }                 // initialise libtorch before the baseline
        long baseline = Status("VmRSS");
        var sw = Stopwatch.StartNew();
        if (mode == "mmap")
        {
            using var model = ModelLoader.Load(dir);
            Console.WriteLine($"{sw.Elapsed.TotalSeconds:F3} {Status("VmHWM")} {baseline}");
        }
        else
        {
            // What a reader without mmap does: read the file, then copy each tensor out of it.
            var bytes = File.ReadAllBytes(Path.Combine(dir, "model.safetensors"));
            using var f = SafeTensorsFile.Open(Path.Combine(dir, "model.safetensors"));
            var tensors = new List<Tensor>();
            foreach (var info in f.Tensors.Values)
            {
                var t = empty(info.Shape, info.DType.ToTorch());
                CopyFromArray(bytes, info, t);
                tensors.Add(t);
            }
            Console.WriteLine($"{sw.Elapsed.TotalSeconds:F3} {Status("VmHWM")} {baseline}");
            GC.KeepAlive(bytes);
            foreach (var t in tensors) t.Dispose();
        }
        return 0;
    }

    static void CopyFromArray(byte[] bytes, SafeTensorInfo info, Tensor t) =>
        bytes.AsSpan(checked((int)info.Offset), checked((int)info.Length)).CopyTo(t.bytes);

    internal static long Status(string key)
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(key + ":"))
                return long.Parse(line.Split(':')[1].Trim().Split(' ')[0]) * 1024;
        return 0;
    }
}
