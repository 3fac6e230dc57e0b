using System.Text;
using System.Text.RegularExpressions;
using CsCheck;

namespace DotQuant.Tool.Tests.Fuzzing;

/// <summary>What a hostile or damaged file looks like, as edits of a valid one. Positions are drawn from
/// the whole int range and taken modulo the file's length, so shrinking (toward 0) moves a failing edit
/// into the header, where the readers' decisions are. Text formats (JSON, YAML) also get token edits:
/// a number, string or bracket replaced by a value readers must refuse (huge, negative, NaN, the wrong
/// type, a string of a million characters).</summary>
public abstract record Mutation
{
    public abstract byte[] Apply(byte[] data);

    public sealed record FlipBit(int Position, int Bit) : Mutation
    {
        public override byte[] Apply(byte[] d) { if (d.Length == 0) return d; var c = (byte[])d.Clone(); c[Position % d.Length] ^= (byte)(1 << Bit); return c; }
    }

    public sealed record SetByte(int Position, byte Value) : Mutation
    {
        public override byte[] Apply(byte[] d) { if (d.Length == 0) return d; var c = (byte[])d.Clone(); c[Position % d.Length] = Value; return c; }
    }

    /// <summary>A little-endian 64-bit field overwritten with an extreme value (lengths, counts, offsets).</summary>
    public sealed record SetWord(int Position, int Choice) : Mutation
    {
        static readonly ulong[] Values = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x100000000, long.MaxValue, ulong.MaxValue, 1UL << 40, 1UL << 62];
        public override byte[] Apply(byte[] d)
        {
            if (d.Length < 8) return d;
            var c = (byte[])d.Clone();
            int at = Position % (d.Length - 7);
            BitConverter.TryWriteBytes(c.AsSpan(at, 8), Values[Choice % Values.Length]);
            return c;
        }
    }

    public sealed record Truncate(int Length) : Mutation
    {
        public override byte[] Apply(byte[] d) => d.Length == 0 ? d : d[..(Length % d.Length)];
    }

    public sealed record Delete(int Position, int Count) : Mutation
    {
        public override byte[] Apply(byte[] d)
        {
            if (d.Length == 0) return d;
            int at = Position % d.Length, n = Math.Min(Count, d.Length - at);
            return [.. d[..at], .. d[(at + n)..]];
        }
    }

    public sealed record Insert(int Position, byte Value, int Count) : Mutation
    {
        public override byte[] Apply(byte[] d)
        {
            int at = d.Length == 0 ? 0 : Position % d.Length;
            return [.. d[..at], .. Enumerable.Repeat(Value, Count), .. d[at..]];
        }
    }

    /// <summary>The k-th token of a text file (number, string, literal, bracket) replaced.</summary>
    public sealed record ReplaceToken(int Token, int Choice) : Mutation
    {
        static readonly Regex Tokens = new("-?\\d+(?:\\.\\d+)?(?:[eE][-+]?\\d+)?|\"(?:[^\"\\\\]|\\\\.)*\"|true|false|null|[\\[\\]{}]", RegexOptions.Compiled);
        static readonly string[] Values =
        [
            "-1", "0", "1e308", "-1e308", "99999999999999999999", "2147483648", "NaN", "null", "true", "\"\"", "[]", "{}",
            "\"" + new string('x', 1 << 20) + "\"", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", "\"\\ud800\"", "4294967296", "0.5", "\"F8_E4M3\"",
        ];

        public override byte[] Apply(byte[] d)
        {
            string text = Encoding.UTF8.GetString(d);
            var matches = Tokens.Matches(text);
            if (matches.Count == 0) return d;
            var m = matches[Token % matches.Count];
            return Encoding.UTF8.GetBytes(text[..m.Index] + Values[Choice % Values.Length] + text[(m.Index + m.Length)..]);
        }
    }

    static readonly Gen<int> Anywhere = Gen.Int[0, int.MaxValue];

    public static readonly Gen<Mutation> Binary = Gen.OneOf<Mutation>(
        Gen.Select(Anywhere, Gen.Int[0, 7], (p, b) => (Mutation)new FlipBit(p, b)),
        Gen.Select(Anywhere, Gen.Byte, (p, v) => (Mutation)new SetByte(p, v)),
        Gen.Select(Anywhere, Gen.Int[0, 31], (p, c) => (Mutation)new SetWord(p, c)),
        Anywhere.Select(l => (Mutation)new Truncate(l)),
        Gen.Select(Anywhere, Gen.Int[1, 64], (p, n) => (Mutation)new Delete(p, n)),
        Gen.Select(Anywhere, Gen.Byte, Gen.Int[1, 64], (p, v, n) => (Mutation)new Insert(p, v, n)));

    public static readonly Gen<Mutation> Text = Gen.Frequency(
        (3, Gen.Select(Anywhere, Gen.Int[0, 63], (t, c) => (Mutation)new ReplaceToken(t, c))),
        (1, Binary));
}
