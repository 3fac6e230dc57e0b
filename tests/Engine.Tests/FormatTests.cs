using DotQuant.Engine.Calibration;
using DotQuant.Runtime;
using DotQuant.Engine.Formats;
using DotQuant.Engine.Tokenization;
using DotQuant.Tests;

namespace DotQuant.Engine.Tests;

public class FormatTests
{
    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    [InlineData(8)]
    public void BitPackingRoundTrips(int bits)
    {
        var rng = new SplitMix64(bits);
        int rows = 7, count = 45;
        var codes = Enumerable.Range(0, rows * count).Select(_ => (byte)rng.NextBelow(1 << bits)).ToArray();
        var packed = BitPacking.PackColumns(codes, rows, count, bits);
        Assert.Equal(BitPacking.Words(count, bits) * rows, packed.Length);
        Assert.Equal(codes, BitPacking.UnpackColumns(packed, rows, count, bits));
        Assert.Equal(codes, BitPacking.UnpackRows(BitPacking.PackRows(codes, rows, count, bits), rows, count, bits));
    }

    [Fact]
    public void GptqLayoutsMatchTheSpec()
    {
        // 4-bit: 8 values per word, low nibble first; symmetric v1 zeros (8 − 1 = 7) give 0x77777777.
        var sevens = Enumerable.Repeat((byte)7, 8).ToArray();
        Assert.Equal(0x77777777, BitPacking.PackRows(sevens, 1, 8, 4)[0]);
        var ramp = Enumerable.Range(0, 8).Select(i => (byte)i).ToArray();
        Assert.Equal(0x76543210, BitPacking.PackColumns(ramp, 1, 8, 4)[0]);
        // 3-bit: value 10 has its low 2 bits at 30–31 of word 0 and its high bit at bit 0 of word 1.
        var v = new byte[32];
        v[10] = 0b101;
        var w = BitPacking.PackColumns(v, 1, 32, 3);
        Assert.Equal(3, w.Length);
        Assert.Equal(unchecked((int)0x40000000), w[0]);      // low bits 01 at 30–31
        Assert.Equal(1, w[1]);                                 // high bit 1 at bit 0
        v[10] = 0; v[21] = 0b110;                              // value 21: low bit at 31 of word 1, high 2 bits at 0–1 of word 2
        w = BitPacking.PackColumns(v, 1, 32, 3);
        Assert.Equal(0, w[1] & int.MaxValue);
        Assert.Equal(3, w[2]);
    }

    [Fact]
    public void CalibrationSamplingIsSeededAndReportsShortText()
    {
        var tok = HfTokenizer.Load(SharedPaths.Stories260K);
        string data = SharedPaths.Data("wikitext2-tokenized", "valid.tokens");
        var a = CalibrationSet.Load(data, tok, 512, 16, 128, seed: 0);
        var b = CalibrationSet.Load(data, tok, 512, 16, 128, seed: 0);
        var c = CalibrationSet.Load(data, tok, 512, 16, 128, seed: 1);
        Assert.Equal(16, a.Sequences.Count);
        Assert.All(a.Sequences, s => Assert.Equal(128, s.Length));
        Assert.Equal(a.Sequences.SelectMany(s => s), b.Sequences.SelectMany(s => s));
        Assert.NotEqual(a.Sequences.SelectMany(s => s), c.Sequences.SelectMany(s => s));

        using var dir = new TempDir();
        File.WriteAllText(dir.File("short.txt"), "Once upon a time.\n\nThe end.");
        var e = Assert.Throws<DotQuantException>(() => CalibrationSet.Load(dir.File("short.txt"), tok, 512, 4, 256, 0));
        Assert.Equal(ErrorCodes.CalibrationData, e.Code);
        Assert.Matches(@"has \d+ tokens \(2 documents\)", e.Message);
    }

    [Fact]
    public void IdsAndJsonlSources()
    {
        var tok = HfTokenizer.Load(SharedPaths.Stories260K);
        using var dir = new TempDir();
        File.WriteAllText(dir.File("c.ids"), "1 2 3 4\n5 6 7\n");
        var ids = CalibrationSet.Load(dir.File("c.ids"), tok, 512, 128, 2048, 0);
        Assert.Equal(new[] { 4, 3 }, ids.Sequences.Select(s => s.Length));
        File.WriteAllText(dir.File("bad.ids"), "1 2 3\n4 999 5\n");
        var e = Assert.Throws<DotQuantException>(() => CalibrationSet.Load(dir.File("bad.ids"), tok, 512, 1, 2, 0));
        Assert.Equal(2, e.Line);
        File.WriteAllText(dir.File("c.jsonl"), "{\"text\": \"Once upon a time there was a cat.\"}\n{\"text\": \"It liked milk and played all day in the sun.\"}\n");
        var j = CalibrationSet.Load(dir.File("c.jsonl"), tok, 512, 3, 8, 0);
        Assert.Equal(3, j.Sequences.Count);
        File.WriteAllText(dir.File("bad.jsonl"), "{\"text\": \"ok\"}\n{\"body\": 1}\n");
        Assert.Equal(2, Assert.Throws<DotQuantException>(() => CalibrationSet.Load(dir.File("bad.jsonl"), tok, 512, 1, 2, 0)).Line);
    }

    [Fact]
    public void FileDigestsAreMemoizedBySizeAndTimestamp()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("a.bin"), "first");
        var stamp = new DateTime(2025, 1, 1, 0, 0, 0, DateTimeKind.Utc);
        File.SetLastWriteTimeUtc(dir.File("a.bin"), stamp);
        var digests = new FileDigests(dir.File("cache"));
        string first = digests.Of(dir.File("a.bin"));
        digests.Save();
        Assert.True(File.Exists(dir.File("cache/file-digests.json")));

        // Same size and timestamp: the memo answers without reading (documented trade-off).
        File.WriteAllText(dir.File("a.bin"), "fir5t");
        File.SetLastWriteTimeUtc(dir.File("a.bin"), stamp);
        Assert.Equal(first, new FileDigests(dir.File("cache")).Of(dir.File("a.bin")));
        // A new timestamp re-hashes.
        File.SetLastWriteTimeUtc(dir.File("a.bin"), stamp.AddSeconds(1));
        Assert.NotEqual(first, new FileDigests(dir.File("cache")).Of(dir.File("a.bin")));
    }
}
