using System.Security.Cryptography;
using System.Text.Json.Nodes;
using DotQuant.Tests;

namespace DotQuant.Tool.Tests;

/// <summary>The content-addressed cache never hands out a damaged entry: every file is read back against
/// the entry's seal before it is used; a flipped byte, a truncated, missing or extra file, or a lost seal
/// is reported (DQ0161), moved aside and computed again — to the same bytes.</summary>
public class CacheIntegrityTests
{
    static string Manifest(TempDir dir)
    {
        File.WriteAllText(dir.File("quant.yaml"),
            $"version: 1\nmodel: {SharedPaths.Stories260K}\ncalibration:\n  data: {SharedPaths.Data("wikitext2-tokenized", "valid.tokens")}\n  samples: 8\n  sequence_length: 64\n" +
            "quantize:\n  method: gptq\n  bits: 4\n  group_size: 16\noutput:\n  name: out\n");
        return dir.File("quant.yaml");
    }

    static Dictionary<string, string> Hashes(string folder) =>
        Directory.GetFiles(folder, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal)
            .ToDictionary(f => Path.GetRelativePath(folder, f), f => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))));

    public static IEnumerable<object[]> Damages() => new[] { "flip", "truncate", "delete", "extra", "seal" }.Select(d => new object[] { d });

    [Theory]
    [MemberData(nameof(Damages))]
    public void A_damaged_entry_is_reported_moved_aside_and_computed_again(string damage)
    {
        using var dir = new TempDir();
        string manifest = Manifest(dir), cache = dir.File("cache");
        var first = CliRunner.Run("run", manifest, "--cache-dir", cache, "--format", "json");
        Assert.True(first.ExitCode == 0, first.Stderr);
        string entry = first.LastJson().GetProperty("output").GetString()!;
        string seal = entry + ".entry.json";
        var sealed_ = JsonNode.Parse(File.ReadAllText(seal))!["files"]!.AsObject();
        var good = Hashes(entry);
        Assert.Equal(good.Keys.Order(), sealed_.Select(kv => kv.Key).Order());

        var hit = CliRunner.Run("run", manifest, "--cache-dir", cache, "--format", "json");
        Assert.True(hit.LastJson().GetProperty("cached").GetBoolean(), "an intact entry is a hit");

        string weights = Path.Combine(entry, "model.safetensors");
        switch (damage)
        {
            case "flip":
                using (var fs = new FileStream(weights, FileMode.Open, FileAccess.ReadWrite))
                {
                    fs.Position = fs.Length / 2;
                    int b = fs.ReadByte();
                    fs.Position = fs.Length / 2;
                    fs.WriteByte((byte)(b ^ 0x01));
                }
                break;
            case "truncate":
                using (var fs = new FileStream(weights, FileMode.Open, FileAccess.ReadWrite)) fs.SetLength(fs.Length - 100);
                break;
            case "delete":
                File.Delete(Path.Combine(entry, "tokenizer.json"));
                break;
            case "extra":
                File.WriteAllText(Path.Combine(entry, "notes.txt"), "not from the run");
                break;
            case "seal":
                File.Delete(seal);
                break;
        }

        var again = CliRunner.Run("run", manifest, "--cache-dir", cache, "--format", "json");
        Assert.True(again.ExitCode == 0, again.Stderr);
        Assert.Contains("DQ0161", again.Stdout);
        Assert.False(again.LastJson().GetProperty("cached").GetBoolean(), "a damaged entry must not be used");
        Assert.Equal(good, Hashes(entry));                       // computed again, to the same bytes
        Assert.True(File.Exists(seal));
        Assert.Empty(Directory.GetDirectories(Path.GetDirectoryName(entry)!, ".out.damaged-*"));
        var hitAgain = CliRunner.Run("run", manifest, "--cache-dir", cache, "--format", "json");
        Assert.True(hitAgain.LastJson().GetProperty("cached").GetBoolean());
    }

    [Fact]
    public void A_required_cache_refuses_a_damaged_entry_instead_of_shipping_it()
    {
        using var dir = new TempDir();
        string manifest = Manifest(dir), cache = dir.File("cache");
        var first = CliRunner.Run("run", manifest, "--cache-dir", cache, "--format", "json");
        Assert.True(first.ExitCode == 0, first.Stderr);
        string entry = first.LastJson().GetProperty("output").GetString()!;
        using (var fs = new FileStream(Path.Combine(entry, "model.safetensors"), FileMode.Open, FileAccess.ReadWrite)) fs.SetLength(10);
        var required = CliRunner.Run("run", manifest, "--cache-dir", cache, "--require-cache", "--format", "json");
        Assert.Equal(1, required.ExitCode);
        Assert.Contains("DQ0161", required.Stdout);
        Assert.Contains("DQ0160", required.Stderr);
        Assert.DoesNotContain("\"cached\":true", required.Stdout);
    }
}
