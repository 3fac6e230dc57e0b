using System.Text;
using DotQuant.Runtime;

namespace DotQuant.Engine.Gguf;

/// <summary>The pieces of a SentencePiece tokenizer.model (ModelProto field 1: SentencePiece
/// {1: piece, 2: score, 3: type}), read with a minimal protobuf walker: nothing else of the model
/// is needed for GGUF.</summary>
public static class SentencePieceModel
{
    public static IEnumerable<(int Id, string Piece, float Score, int Type)> Read(string path)
    {
        var bytes = File.ReadAllBytes(path);
        var pieces = new List<(int, string, float, int)>();
        int at = 0;
        try
        {
            while (at < bytes.Length)
            {
                var (field, wire) = Tag(bytes, ref at);
                if (field == 1 && wire == 2)
                {
                    int length = checked((int)Varint(bytes, ref at));
                    pieces.Add(Piece(bytes.AsSpan(at, length), pieces.Count));
                    at += length;
                }
                else Skip(bytes, ref at, wire);
            }
        }
        catch (Exception e) when (e is IndexOutOfRangeException or ArgumentOutOfRangeException or OverflowException or FormatException)
        {
            throw new DotQuantException(ErrorCodes.TokenizerMalformed, $"tokenizer.model is not a SentencePiece model ({e.Message})", path);
        }
        return pieces;
    }

    static (int, string, float, int) Piece(ReadOnlySpan<byte> m, int id)
    {
        string piece = "";
        float score = 0;
        int type = 1;
        int at = 0;
        var bytes = m.ToArray();
        while (at < bytes.Length)
        {
            var (field, wire) = Tag(bytes, ref at);
            switch (field, wire)
            {
                case (1, 2):
                    int n = checked((int)Varint(bytes, ref at));
                    piece = Encoding.UTF8.GetString(bytes, at, n);
                    at += n;
                    break;
                case (2, 5):
                    score = BitConverter.ToSingle(bytes, at);
                    at += 4;
                    break;
                case (3, 0):
                    type = (int)Varint(bytes, ref at);
                    break;
                default:
                    Skip(bytes, ref at, wire);
                    break;
            }
        }
        return (id, piece, score, type);
    }

    static (int Field, int Wire) Tag(byte[] b, ref int at)
    {
        ulong t = Varint(b, ref at);
        return ((int)(t >> 3), (int)(t & 7));
    }

    static ulong Varint(byte[] b, ref int at)
    {
        ulong v = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            byte x = b[at++];
            v |= (ulong)(x & 0x7F) << shift;
            if (x < 0x80) return v;
        }
        throw new FormatException("varint longer than 10 bytes");
    }

    static void Skip(byte[] b, ref int at, int wire)
    {
        switch (wire)
        {
            case 0: Varint(b, ref at); break;
            case 1: at += 8; break;
            case 2:
                // Read the length first: `at += Varint(b, ref at)` would add to the old position.
                int length = checked((int)Varint(b, ref at));
                at += length;
                break;
            case 5: at += 4; break;
            default: throw new FormatException($"protobuf wire type {wire}");
        }
        if (at > b.Length) throw new FormatException("field runs past the end");
    }
}
