using System.Text.Json.Nodes;
using DotQuant.Engine.IO;
using DotQuant.Tests;
using Xunit;
using static TorchSharp.torch;

namespace DotQuant.Engine.Tests;

public class ShardedWriterTests
{
    /// <summary>Tensors of several dtypes and sizes; one is larger than the shard size.</summary>
    static List<(string Name, Tensor T)> Tensors()
    {
        var g = new Generator(9);
        return
        [
            ("a.weight", randn(64, 32, generator: g)),                                        // 8 KiB
            ("b.bias", randn(32, generator: g).to(ScalarType.BFloat16)),
            ("c.qweight", randint(0, 1000, [40, 16], dtype: ScalarType.Int32, generator: g)),
            ("d.big", randn(100, 40, generator: g)),                                          // 16 KB > shard
            ("e.zeros", randint(0, 16, [3, 7], dtype: ScalarType.Byte, generator: g)),
            ("f.empty", zeros(0, 4)),
            ("g.weight", randn(16, 16, generator: g).to(ScalarType.Float16)),
        ];
    }

    static string Write(TempDir dir, string name, long shard, Action<ShardedSafeTensorsWriter, List<(string, Tensor)>>? between = null)
    {
        string folder = dir.File(name);
        Directory.CreateDirectory(folder);
        var tensors = Tensors();
        using var w = new ShardedSafeTensorsWriter(dir.File(name + "-scratch"), shard);
        foreach (var (n, t) in tensors) w.Add(n, t);
        w.Finish(folder);
        foreach (var (_, t) in tensors) t.Dispose();
        return folder;
    }

    [Fact]
    public void Shards_hold_at_most_the_shard_size_and_read_back_through_the_index()
    {
        using var dir = new TempDir();
        string folder = Write(dir, "out", 10_000);
        var files = Directory.GetFiles(folder).Select(Path.GetFileName).Order().ToList();
        int n = files.Count(f => f!.EndsWith(".safetensors"));
        Assert.True(n > 2);
        Assert.All(files.Where(f => f!.EndsWith(".safetensors")), f => Assert.Matches($@"^model-\d{{5}}-of-{n:D5}\.safetensors$", f));
        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "model.safetensors.index.json")))!;
        var tensors = Tensors();
        Assert.Equal(tensors.Sum(t => t.T.NumberOfElements * t.T.ElementSize), (long)index["metadata"]!["total_size"]!);

        using var ckpt = Checkpoint.Open(folder);
        foreach (var (name, t) in tensors)
        {
            using var back = ckpt.Load(name);
            Assert.Equal(t.dtype, back.dtype);
            Assert.True(back.shape.SequenceEqual(t.shape) && (t.numel() == 0 || back.eq(t).all().item<bool>()), name);
        }
        foreach (var f in Directory.GetFiles(folder, "model-*.safetensors"))
        {
            // Each shard is a valid file on its own: data contiguous from offset 0 (what the Rust reader demands).
            using var s = SafeTensorsFile.Open(f);
            var spans = s.Tensors.Values.OrderBy(t => t.Offset).ToList();
            long dataStart = spans.Min(t => t.Offset);
            long at = dataStart;
            foreach (var t in spans) { Assert.Equal(at, t.Offset); at += t.Length; }
            Assert.Equal(new FileInfo(f).Length, at);
            Assert.True(spans.Sum(t => t.Length) <= 10_000 || spans.Count == 1, $"{f} holds {spans.Sum(t => t.Length)} bytes");
            Assert.Equal(0, dataStart % 8);
        }
        foreach (var t in tensors) t.T.Dispose();
    }

    [Fact]
    public void One_shard_is_model_safetensors_and_the_bytes_are_deterministic()
    {
        using var dir = new TempDir();
        string a = Write(dir, "a", 1L << 30), b = Write(dir, "b", 1L << 30);
        Assert.Equal(new[] { "model.safetensors" }, Directory.GetFiles(a).Select(Path.GetFileName));
        Assert.Equal(File.ReadAllBytes(Path.Combine(a, "model.safetensors")), File.ReadAllBytes(Path.Combine(b, "model.safetensors")));
    }

    [Fact]
    public void Resuming_from_a_commit_after_later_writes_gives_the_same_files()
    {
        using var dir = new TempDir();
        string whole = Write(dir, "whole", 10_000);
        var tensors = Tensors();
        string scratch = dir.File("resumed-scratch");
        ShardedSafeTensorsWriter.State state;
        using (var w = new ShardedSafeTensorsWriter(scratch, 10_000))
        {
            for (int i = 0; i < 3; i++) w.Add(tensors[i].Name, tensors[i].T);
            state = w.Commit();
            // Work after the commit that a crash throws away: more tensors, a closed shard, Finish.
            for (int i = 3; i < tensors.Count; i++) w.Add(tensors[i].Name, tensors[i].T);
            Directory.CreateDirectory(dir.File("lost"));
            w.Finish(dir.File("lost"));
        }
        var restored = ShardedSafeTensorsWriter.State.FromJson(JsonNode.Parse(state.ToJson().ToJsonString())!);
        string folder = dir.File("resumed");
        Directory.CreateDirectory(folder);
        using (var w = ShardedSafeTensorsWriter.Resume(scratch, 10_000, restored))
        {
            for (int i = 3; i < tensors.Count; i++) w.Add(tensors[i].Name, tensors[i].T);
            w.Finish(folder);
        }
        var expected = Directory.GetFiles(whole).Select(Path.GetFileName).Order().ToList();
        Assert.Equal(expected, Directory.GetFiles(folder).Select(Path.GetFileName).Order().ToList());
        foreach (var f in expected)
            Assert.Equal(File.ReadAllBytes(Path.Combine(whole, f!)), File.ReadAllBytes(Path.Combine(folder, f!)));
        foreach (var t in tensors) t.T.Dispose();
    }
}
