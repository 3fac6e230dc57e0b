using System.Text;
using DotQuant.Runtime;
using DotQuant.Engine.IO;
using DotQuant.Tests;
using static TorchSharp.torch;

namespace DotQuant.Engine.Tests;

public class SafeTensorsTests
{
    static DotQuantException Fails(string path) => Assert.Throws<DotQuantException>(() => SafeTensorsFile.Open(path).Dispose());

    [Fact]
    public void RoundTripsEveryDtype()
    {
        using var dir = new TempDir();
        var tensors = new Dictionary<string, Tensor>
        {
            ["f64"] = tensor(new double[] { 1.5, -2 }),
            ["f32"] = Scalars.Range(12, ScalarType.Float32).reshape(3, 4),
            ["f16"] = tensor(new float[] { 0.5f, 1, 2 }).to(ScalarType.Float16),
            ["bf16"] = tensor(new float[] { 0.25f, -8 }).to(ScalarType.BFloat16),
            ["i64"] = tensor(new long[] { long.MinValue, 7 }),
            ["i32"] = tensor(new int[] { -3, 4, 5 }),
            ["i16"] = tensor(new short[] { -3, 4 }),
            ["i8"] = tensor(new sbyte[] { -128, 127 }),
            ["u8"] = tensor(new byte[] { 0, 255 }),
            ["bool"] = tensor(new bool[] { true, false, true }),
            ["empty"] = zeros(0, 3),
        };
        string path = dir.File("t.safetensors");
        SafeTensorsWriter.Write(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });
        using var f = SafeTensorsFile.Open(path);
        Assert.Equal("pt", f.Metadata["format"]);
        foreach (var (name, expected) in tensors)
        {
            using var actual = f.Load(name);
            Assert.Equal(expected.dtype, actual.dtype);
            Assert.Equal(expected.shape, actual.shape);
            Assert.Equal(expected.contiguous().bytes.ToArray(), actual.bytes.ToArray());
        }
    }

    [Fact]
    public void WriterIsDeterministicSortedAndAligned()
    {
        using var dir = new TempDir();
        var a = new Dictionary<string, Tensor> { ["z"] = ones(3), ["a"] = zeros(2, 2), ["m.b"] = ones(1).to(ScalarType.BFloat16) };
        var b = new Dictionary<string, Tensor> { ["m.b"] = ones(1).to(ScalarType.BFloat16), ["a"] = zeros(2, 2), ["z"] = ones(3) };
        SafeTensorsWriter.Write(dir.File("a.safetensors"), a);
        SafeTensorsWriter.Write(dir.File("b.safetensors"), b);
        var bytesA = File.ReadAllBytes(dir.File("a.safetensors"));
        Assert.Equal(bytesA, File.ReadAllBytes(dir.File("b.safetensors")));
        ulong n = BitConverter.ToUInt64(bytesA, 0);
        Assert.Equal(0UL, (8 + n) % 8);
        string header = Encoding.UTF8.GetString(bytesA, 8, (int)n).TrimEnd(' ');
        Assert.True(header.IndexOf("\"a\"") < header.IndexOf("\"m.b\"") && header.IndexOf("\"m.b\"") < header.IndexOf("\"z\""));
        Assert.Empty(Directory.GetFiles(dir.Path, "*.tmp*"));
    }

    [Fact]
    public void ShorterThanLengthPrefixIsTruncated()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("x.safetensors"), [1, 2, 3]);
        Assert.Equal(ErrorCodes.SafetensorsTruncated, Fails(dir.File("x.safetensors")).Code);
    }

    [Fact]
    public void HeaderLongerThanFileIsRejected()
    {
        using var dir = new TempDir();
        Fixtures.WriteRawSafetensors(dir.File("x.safetensors"), "{}", 0, declaredLength: 5000);
        Assert.Equal(ErrorCodes.SafetensorsHeaderLength, Fails(dir.File("x.safetensors")).Code);
    }

    [Fact]
    public void HeaderAboveCapIsRejected()
    {
        using var dir = new TempDir();
        Fixtures.WriteRawSafetensors(dir.File("x.safetensors"), "{}", 0, declaredLength: ulong.MaxValue - 3);
        Assert.Equal(ErrorCodes.SafetensorsHeaderLength, Fails(dir.File("x.safetensors")).Code);
    }

    [Fact]
    public void MalformedJsonIsRejected()
    {
        using var dir = new TempDir();
        Fixtures.WriteRawSafetensors(dir.File("x.safetensors"), "{\"a\": {\"dtype\": \"F32\",", 0);
        Assert.Equal(ErrorCodes.SafetensorsHeaderJson, Fails(dir.File("x.safetensors")).Code);
    }

    [Fact]
    public void UnknownDtypeIsRejected()
    {
        using var dir = new TempDir();
        Fixtures.WriteRawSafetensors(dir.File("x.safetensors"), "{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2);
        var e = Fails(dir.File("x.safetensors"));
        Assert.Equal(ErrorCodes.SafetensorsUnknownDtype, e.Code);
        Assert.Contains("F8_E4M3", e.Message);
    }

    [Fact]
    public void ShapeTimesDtypeMustMatchSpan()
    {
        using var dir = new TempDir();
        Fixtures.WriteRawSafetensors(dir.File("x.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8);
        Assert.Equal(ErrorCodes.SafetensorsShapeMismatch, Fails(dir.File("x.safetensors")).Code);
    }

    [Fact]
    public void OverflowingShapeIsRejected()
    {
        using var dir = new TempDir();
        Fixtures.WriteRawSafetensors(dir.File("x.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,8],\"data_offsets\":[0,8]}}", 8);
        Assert.Equal(ErrorCodes.SafetensorsShapeMismatch, Fails(dir.File("x.safetensors")).Code);
    }

    [Fact]
    public void SpanOutsideFileIsTruncation()
    {
        using var dir = new TempDir();
        Fixtures.WriteRawSafetensors(dir.File("x.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8);
        Assert.Equal(ErrorCodes.SafetensorsSpanOutside, Fails(dir.File("x.safetensors")).Code);
    }

    [Fact]
    public void TruncatedRealFileIsRejected()
    {
        using var dir = new TempDir();
        var bytes = File.ReadAllBytes(Path.Combine(SharedPaths.Stories260K, "model.safetensors"));
        File.WriteAllBytes(dir.File("x.safetensors"), bytes.AsSpan(0, bytes.Length / 2).ToArray());
        Assert.Equal(ErrorCodes.SafetensorsSpanOutside, Fails(dir.File("x.safetensors")).Code);
    }

    [Fact]
    public void OverlappingSpansAreRejected()
    {
        using var dir = new TempDir();
        Fixtures.WriteRawSafetensors(dir.File("x.safetensors"),
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12);
        Assert.Equal(ErrorCodes.SafetensorsSpanOverlap, Fails(dir.File("x.safetensors")).Code);
    }

    [Fact]
    public void NegativeOrReversedOffsetsAreRejected()
    {
        using var dir = new TempDir();
        Fixtures.WriteRawSafetensors(dir.File("x.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8);
        Assert.Equal(ErrorCodes.SafetensorsHeaderJson, Fails(dir.File("x.safetensors")).Code);
    }

    [Fact]
    public void ShardedCheckpointLoadsThroughIndex()
    {
        using var dir = new TempDir();
        SafeTensorsWriter.Write(dir.File("model-00001-of-00002.safetensors"), new Dictionary<string, Tensor> { ["a"] = ones(2) });
        SafeTensorsWriter.Write(dir.File("model-00002-of-00002.safetensors"), new Dictionary<string, Tensor> { ["b"] = full([3], Scalars.Of(2f)) });
        File.WriteAllText(dir.File("model.safetensors.index.json"),
            "{\"metadata\":{},\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\",\"b\":\"model-00002-of-00002.safetensors\"}}");
        using var ckpt = Checkpoint.Open(dir.Path);
        Assert.Equal(2, ckpt.Files.Count);
        using var b = ckpt.Load("b");
        Assert.Equal(6f, b.sum().item<float>());
    }

    [Fact]
    public void IndexNamingAMissingTensorOrEscapingShardIsRejected()
    {
        using var dir = new TempDir();
        SafeTensorsWriter.Write(dir.File("s1.safetensors"), new Dictionary<string, Tensor> { ["a"] = ones(2) });
        File.WriteAllText(dir.File("model.safetensors.index.json"), "{\"weight_map\":{\"b\":\"s1.safetensors\"}}");
        Assert.Equal(ErrorCodes.ShardIndex, Assert.Throws<DotQuantException>(() => Checkpoint.Open(dir.Path)).Code);
        File.WriteAllText(dir.File("model.safetensors.index.json"), "{\"weight_map\":{\"a\":\"../s1.safetensors\"}}");
        Assert.Equal(ErrorCodes.ShardIndex, Assert.Throws<DotQuantException>(() => Checkpoint.Open(dir.Path)).Code);
    }

    [Fact]
    public void PickleCheckpointIsRefusedWithConversionHint()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("pytorch_model.bin"), [0x80, 0x02, 0x7d, 0x71, 0x00]);
        var e = Assert.Throws<DotQuantException>(() => Checkpoint.Open(dir.Path));
        Assert.Equal(ErrorCodes.PickleCheckpoint, e.Code);
        Assert.Contains("safetensors", e.Message);
    }
}
