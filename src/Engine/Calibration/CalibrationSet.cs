using System.Text.Json;
using System.Text.RegularExpressions;
using DotQuant.Runtime;
using DotQuant.Engine.Tokenization;

namespace DotQuant.Engine.Calibration;

/// <summary>The token sequences calibration runs on.
/// Text (.txt: documents separated by blank lines; .jsonl: one {"text": ...} per line) is joined
/// with "\n\n" (as GPTQ joins WikiText), tokenized once without BOS, and N windows of L tokens are
/// drawn at seeded random offsets (windows may overlap, as in GPTQ's sampling). A pre-tokenized
/// .ids file (one sequence per line, space-separated ids) is used exactly as given.</summary>
public sealed class CalibrationSet
{
    public IReadOnlyList<long[]> Sequences { get; }
    public string Source { get; }
    public long AvailableTokens { get; }

    CalibrationSet(IReadOnlyList<long[]> sequences, string source, long available)
    {
        Sequences = sequences; Source = source; AvailableTokens = available;
    }

    public static CalibrationSet Load(string path, HfTokenizer tokenizer, int vocabSize, int samples, int sequenceLength, long seed)
    {
        if (!File.Exists(path))
            throw new DotQuantException(ErrorCodes.CalibrationData, $"calibration data not found: {path}", path);
        string ext = Path.GetExtension(path).ToLowerInvariant();
        if (ext == ".ids") return FromIds(path, vocabSize);

        var documents = ext == ".jsonl" ? ReadJsonl(path) : ReadText(path);
        if (documents.Count == 0)
            throw new DotQuantException(ErrorCodes.CalibrationData, "the calibration file has no text", path);
        var ids = tokenizer.Encode(string.Join("\n\n", documents));
        if (ids.Length < sequenceLength)
            throw new DotQuantException(ErrorCodes.CalibrationData,
                $"the calibration text has {ids.Length:N0} tokens ({documents.Count} documents), fewer than one sequence of {sequenceLength}; give more text or a shorter sequence_length", path);
        var rng = new SplitMix64(seed);
        var sequences = new List<long[]>(samples);
        for (int i = 0; i < samples; i++)
        {
            long start = rng.NextBelow(ids.Length - sequenceLength + 1);
            sequences.Add(ids.AsSpan((int)start, sequenceLength).ToArray().Select(t => (long)t).ToArray());
        }
        return new CalibrationSet(sequences, path, ids.Length);
    }

    static List<string> ReadText(string path) =>
        Regex.Split(File.ReadAllText(path).Replace("\r\n", "\n"), @"\n[ \t]*\n")
            .Select(d => d.Trim()).Where(d => d.Length > 0).ToList();

    static List<string> ReadJsonl(string path)
    {
        var docs = new List<string>();
        int lineNo = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            try
            {
                using var doc = JsonDocument.Parse(line);
                if (!doc.RootElement.TryGetProperty("text", out var t) || t.ValueKind != JsonValueKind.String)
                    throw new DotQuantException(ErrorCodes.CalibrationData, "a JSON line without a string 'text' field", path, line: lineNo, column: 1);
                if (t.GetString()!.Trim().Length > 0) docs.Add(t.GetString()!);
            }
            catch (JsonException e)
            {
                throw new DotQuantException(ErrorCodes.CalibrationData, $"not JSON: {e.Message}", path, line: lineNo, column: 1);
            }
        }
        return docs;
    }

    static CalibrationSet FromIds(string path, int vocabSize)
    {
        var sequences = new List<long[]>();
        int lineNo = 0;
        long total = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            var parts = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            var seq = new long[parts.Length];
            for (int i = 0; i < parts.Length; i++)
            {
                if (!long.TryParse(parts[i], out long id) || id < 0 || id >= vocabSize)
                    throw new DotQuantException(ErrorCodes.CalibrationData, $"'{parts[i]}' is not a token id in [0, {vocabSize})", path, line: lineNo, column: 1);
                seq[i] = id;
            }
            if (seq.Length < 2)
                throw new DotQuantException(ErrorCodes.CalibrationData, "a sequence needs at least two tokens", path, line: lineNo, column: 1);
            sequences.Add(seq);
            total += seq.Length;
        }
        if (sequences.Count == 0)
            throw new DotQuantException(ErrorCodes.CalibrationData, "the .ids file has no sequences", path);
        return new CalibrationSet(sequences, path, total);
    }
}
