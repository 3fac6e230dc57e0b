using DotQuant.Engine.Imatrix;
using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

/// <summary>`imatrix`: llama.cpp's importance matrix from a text file (the statistics are checked against
/// llama-imatrix in Gguf.Tests' ImatrixTests); the command's files and its refusals.</summary>
public class ImatrixCommandTests
{
    static string LlamaTiny => Path.Combine(SharedPaths.Root, "models", "llama-tiny");

    static string Text(TempDir dir, int chars)
    {
        File.WriteAllText(dir.File("calib.txt"), File.ReadAllText(SharedPaths.Data("wikitext2", "wiki.test.raw"))[..chars]);
        return dir.File("calib.txt");
    }

    [Fact]
    public void It_writes_a_gguf_imatrix_and_a_legacy_dat_that_read_back_alike()
    {
        using var dir = new TempDir();
        string text = Text(dir, 40_000);
        var r = CliRunner.Run("imatrix", LlamaTiny, "--data", text, "-o", dir.File("m.gguf"), "-c", "128", "--chunks", "4");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("42 entries from 4 chunks", r.Stdout);
        r = CliRunner.Run("imatrix", LlamaTiny, "--data", text, "-o", dir.File("m.dat"), "-c", "128", "--chunks", "4");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var gguf = ImportanceMatrix.Load(dir.File("m.gguf"));
        var dat = ImportanceMatrix.Load(dir.File("m.dat"));
        Assert.Equal(4, gguf.ChunkCount);
        Assert.Equal(128, gguf.ChunkSize);
        Assert.Equal([512f], gguf.Entries["blk.5.ffn_down.weight"].Counts);
        Assert.Equal(gguf.Entries.Keys, dat.Entries.Keys);
        var a = gguf.Importance("blk.5.ffn_down.weight")!;
        var b = dat.Importance("blk.5.ffn_down.weight")!;
        Assert.Equal(768, a.Length);
        for (int j = 0; j < a.Length; j++) Assert.True(Math.Abs(a[j] - b[j]) <= 1e-6 * a[j]);
    }

    [Fact]
    public void Bad_input_gets_a_code_and_leaves_an_existing_file()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("keep.gguf"), "previous");
        var r = CliRunner.Run("imatrix", LlamaTiny, "--data", dir.File("missing.txt"), "-o", dir.File("keep.gguf"));
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("DQ0100", r.Stderr);
        // Too little text for two chunks (llama-imatrix's minimum).
        r = CliRunner.Run("imatrix", LlamaTiny, "--data", Text(dir, 300), "-o", dir.File("keep.gguf"), "-c", "512");
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("DQ0151", r.Stderr);
        Assert.Equal("previous", File.ReadAllText(dir.File("keep.gguf")));
    }
}
