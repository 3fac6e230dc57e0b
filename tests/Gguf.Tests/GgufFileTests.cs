using System.Security.Cryptography;
using DotQuant.Runtime;
using DotQuant.Engine.Gguf;
using DotQuant.Engine.Gguf.Blocks;
using DotQuant.Tests;

namespace DotQuant.Gguf.Tests;

/// <summary>The GGUF writer and reader on their own: round trips, deterministic bytes, and hostile or
/// truncated files refused with a DQ code (never another exception).</summary>
public class GgufFileTests
{
    static readonly KeyValuePair<string, GgufValue>[] Metadata =
    [
        new("general.architecture", GgufValue.Of("llama")),
        new("general.name", GgufValue.Of("tiny ünïcode")),
        new("llama.block_count", GgufValue.Of(2u)),
        new("llama.rope.freq_base", GgufValue.Of(10000f)),
        new("tokenizer.ggml.add_bos_token", GgufValue.Of(true)),
        new("tokenizer.ggml.tokens", GgufValue.Of(new[] { "<unk>", "▁a", "" })),
        new("tokenizer.ggml.scores", GgufValue.Of(new[] { 0f, -1.5f, -2f })),
    ];

    static (List<GgufTensorSpec> Specs, List<byte[]> Data) Tensors()
    {
        var rng = new Random(7);
        var specs = new List<GgufTensorSpec>
        {
            new("a.weight", [64, 3], GgmlType.Q4_0),
            new("b.weight", [5], GgmlType.F32),
            new("c.weight", [32, 2], GgmlType.Q8_0),
            new("d.weight", [64, 2], GgmlType.F16),
        };
        var data = specs.Select(s =>
        {
            var floats = Enumerable.Range(0, (int)(s.Dims[0] * s.Dims.Skip(1).Aggregate(1L, (x, y) => x * y))).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray();
            return BlockCodec.For(s.Type).QuantizeRows(floats, (int)s.Dims[0]);
        }).ToList();
        return (specs, data);
    }

    static void WriteSample(string path)
    {
        var (specs, data) = Tensors();
        using var w = new GgufWriter(path, Metadata, specs);
        for (int i = 0; i < specs.Count; i++) w.Write(specs[i].Name, data[i]);
        w.Commit();
    }

    [Fact]
    public void WhatIsWrittenReadsBackAndTheBytesAreDeterministic()
    {
        using var dir = new TempDir();
        WriteSample(dir.File("a.gguf"));
        WriteSample(dir.File("b.gguf"));
        Assert.Equal(SHA256.HashData(File.ReadAllBytes(dir.File("a.gguf"))), SHA256.HashData(File.ReadAllBytes(dir.File("b.gguf"))));

        using var f = GgufFile.Open(dir.File("a.gguf"));
        Assert.Equal(3u, f.Version);
        Assert.Equal(Metadata.Select(m => m.Key), f.Metadata.Select(m => m.Key));
        Assert.Equal("tiny ünïcode", f["general.name"]!.AsString());
        Assert.Equal(2, f["llama.block_count"]!.AsInteger());
        Assert.True(f["tokenizer.ggml.add_bos_token"]!.AsBool());
        Assert.Equal(new[] { "<unk>", "▁a", "" }, f["tokenizer.ggml.tokens"]!.AsArray<string>());
        Assert.Equal(new[] { 0f, -1.5f, -2f }, f["tokenizer.ggml.scores"]!.AsArray<float>());
        var (specs, data) = Tensors();
        Assert.Equal(specs.Select(s => s.Name), f.Tensors.Select(t => t.Name));
        for (int i = 0; i < specs.Count; i++)
        {
            var t = f.Tensors[i];
            Assert.Equal(specs[i].Dims, t.Dims);
            Assert.Equal(specs[i].Type, t.Type);
            Assert.Equal(0, t.Offset % 32);
            Assert.Equal(data[i], f.ReadAll(t));
        }
    }

    [Fact]
    public void EveryTruncationIsRefusedWithACode()
    {
        using var dir = new TempDir();
        WriteSample(dir.File("whole.gguf"));
        var bytes = File.ReadAllBytes(dir.File("whole.gguf"));
        // Every prefix inside the header and a stride through the data: a DQ code, never a crash.
        var lengths = Enumerable.Range(0, 600).Concat(Enumerable.Range(0, bytes.Length / 7).Select(i => i * 7)).Where(n => n < bytes.Length).Distinct();
        foreach (int n in lengths)
        {
            File.WriteAllBytes(dir.File("cut.gguf"), bytes[..n]);
            var e = Assert.Throws<DotQuantException>(() => { using var _ = GgufFile.Open(dir.File("cut.gguf")); });
            Assert.Matches("^DQ011[234]$", e.Code);
        }
    }

    [Fact]
    public void HostileHeadersAreRefusedWithACode()
    {
        using var dir = new TempDir();
        WriteSample(dir.File("whole.gguf"));
        var good = File.ReadAllBytes(dir.File("whole.gguf"));

        void Refused(string code, Action<byte[]> corrupt, string because)
        {
            var b = (byte[])good.Clone();
            corrupt(b);
            File.WriteAllBytes(dir.File("bad.gguf"), b);
            var e = Assert.Throws<DotQuantException>(() => { using var _ = GgufFile.Open(dir.File("bad.gguf")); });
            Assert.True(code == e.Code, $"{because}: {e.Code} {e.Message}");
        }

        Refused(ErrorCodes.GgufHeader, b => b[0] = (byte)'X', "magic");
        Refused(ErrorCodes.GgufHeader, b => BitConverter.TryWriteBytes(b.AsSpan(4), 7u), "version");
        Refused(ErrorCodes.GgufHeader, b => BitConverter.TryWriteBytes(b.AsSpan(4), 0x03000000u), "big-endian");
        Refused(ErrorCodes.GgufTruncated, b => BitConverter.TryWriteBytes(b.AsSpan(8), ulong.MaxValue), "tensor count");
        Refused(ErrorCodes.GgufTruncated, b => BitConverter.TryWriteBytes(b.AsSpan(16), 1UL << 40), "metadata count");
        // The first key's length.
        Refused(ErrorCodes.GgufTruncated, b => BitConverter.TryWriteBytes(b.AsSpan(24), 1UL << 50), "string length");
        // The first value's type (after the 8-byte length and the 20-byte key "general.architecture").
        Refused(ErrorCodes.GgufHeader, b => BitConverter.TryWriteBytes(b.AsSpan(24 + 8 + 20), 13u), "value type");

        using var f = GgufFile.Open(dir.File("whole.gguf"));
        long infoStart = FindTensorInfo(good, "a.weight");
        // a.weight: name (8 + 8), n_dims, dims (2 × 8), type, offset.
        long typeAt = infoStart + 16 + 4 + 16, offsetAt = typeAt + 4;
        Refused(ErrorCodes.GgufTensor, b => BitConverter.TryWriteBytes(b.AsSpan((int)typeAt), 5u), "removed type Q4_2");
        Refused(ErrorCodes.GgufTensor, b => BitConverter.TryWriteBytes(b.AsSpan((int)typeAt), 1000u), "unknown type");
        Refused(ErrorCodes.GgufTensor, b => BitConverter.TryWriteBytes(b.AsSpan((int)offsetAt), 8UL), "misaligned offset");
        Refused(ErrorCodes.GgufTensor, b => BitConverter.TryWriteBytes(b.AsSpan((int)offsetAt), (ulong)f.Tensors[1].Offset), "overlap");
        Refused(ErrorCodes.GgufTruncated, b => BitConverter.TryWriteBytes(b.AsSpan((int)offsetAt), (ulong)(good.Length - f.DataOffset) / 32 * 32), "past the end");
        Refused(ErrorCodes.GgufTensor, b => BitConverter.TryWriteBytes(b.AsSpan((int)infoStart + 16 + 4), 48UL), "row not a multiple of the block");
        Refused(ErrorCodes.GgufTensor, b => BitConverter.TryWriteBytes(b.AsSpan((int)infoStart + 16), 5u), "five dims");
        Refused(ErrorCodes.GgufTensor, b => BitConverter.TryWriteBytes(b.AsSpan((int)infoStart + 16 + 4 + 8), 0UL), "zero dim");
    }

    [Fact]
    public void AWriterThatIsNotCommittedLeavesNothingAndTheOldFileStands()
    {
        using var dir = new TempDir();
        WriteSample(dir.File("m.gguf"));
        var before = File.ReadAllBytes(dir.File("m.gguf"));
        var (specs, data) = Tensors();
        using (var w = new GgufWriter(dir.File("m.gguf"), Metadata, specs))
            w.Write(specs[0].Name, data[0]);
        Assert.Equal(before, File.ReadAllBytes(dir.File("m.gguf")));
        Assert.Single(Directory.GetFiles(dir.Path));
    }

    [Fact]
    public void WhatLlamaCppCannotHoldIsRefused()
    {
        using var dir = new TempDir();
        var e = Assert.Throws<DotQuantException>(() => new GgufWriter(dir.File("x.gguf"), Metadata, [new("ffn_down.weight", [172, 64], GgmlType.Q4_0)]));
        Assert.Equal(ErrorCodes.GgufUnsupported, e.Code);
        Assert.Contains("172", e.Message);
        e = Assert.Throws<DotQuantException>(() => new GgufWriter(dir.File("x.gguf"), Metadata, [new(new string('n', 64), [32], GgmlType.F32)]));
        Assert.Equal(ErrorCodes.GgufUnsupported, e.Code);
        Assert.Empty(Directory.GetFiles(dir.Path));
    }

    static long FindTensorInfo(byte[] file, string name)
    {
        var needle = BitConverter.GetBytes((ulong)name.Length).Concat(System.Text.Encoding.UTF8.GetBytes(name)).ToArray();
        return file.AsSpan().IndexOf(needle);
    }
}
