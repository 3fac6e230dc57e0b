using DotQuant.Runtime;

namespace DotQuant.Engine.Tokenization;

/// <summary>The BPE model of Hugging Face tokenizers: a word starts as one symbol per character
/// (or per UTF-8 byte token with byte fallback), then the lowest-ranked adjacent pair is merged
/// repeatedly, leftmost first on ties — the same priority-queue order as the Rust implementation,
/// which matters when merges overlap.</summary>
public sealed class BpeModel
{
    readonly Dictionary<string, int> _vocab;
    readonly string[] _idToToken;
    readonly Dictionary<(int, int), (int Rank, int NewId)> _merges;
    readonly int? _unkId;
    readonly bool _fuseUnk, _byteFallback, _ignoreMerges;
    readonly int[]? _byteTokens;
    readonly Dictionary<string, int[]> _cache = new(StringComparer.Ordinal);
    const int CacheLimit = 1 << 16;
    const int CacheableLength = 256;

    public IReadOnlyDictionary<string, int> Vocab => _vocab;
    public int VocabSize => _idToToken.Length;

    public BpeModel(Dictionary<string, int> vocab, IReadOnlyList<(string A, string B)> merges, string? unkToken,
        bool fuseUnk, bool byteFallback, bool ignoreMerges)
    {
        _vocab = vocab;
        int max = vocab.Count == 0 ? 0 : vocab.Values.Max() + 1;
        _idToToken = new string[max];
        foreach (var (tok, id) in vocab) _idToToken[id] = tok;
        _merges = new Dictionary<(int, int), (int, int)>(merges.Count);
        for (int rank = 0; rank < merges.Count; rank++)
        {
            var (a, b) = merges[rank];
            if (!vocab.TryGetValue(a, out int ia) || !vocab.TryGetValue(b, out int ib) || !vocab.TryGetValue(a + b, out int merged))
                throw new DotQuantException(ErrorCodes.TokenizerMalformed, $"merge '{a} {b}' refers to a token missing from the vocabulary");
            _merges.TryAdd((ia, ib), (rank, merged));
        }
        if (unkToken is not null)
        {
            if (!vocab.TryGetValue(unkToken, out int u))
                throw new DotQuantException(ErrorCodes.TokenizerMalformed, $"unk_token '{unkToken}' is not in the vocabulary");
            _unkId = u;
        }
        _fuseUnk = fuseUnk;
        _byteFallback = byteFallback;
        _ignoreMerges = ignoreMerges;
        if (byteFallback)
        {
            _byteTokens = new int[256];
            for (int b = 0; b < 256; b++)
                _byteTokens[b] = vocab.TryGetValue($"<0x{b:X2}>", out int id) ? id : -1;
        }
    }

    public string? IdToToken(int id) => id >= 0 && id < _idToToken.Length ? _idToToken[id] : null;

    public void Encode(string word, List<int> output)
    {
        if (word.Length == 0) return;
        if (word.Length <= CacheableLength && _cache.TryGetValue(word, out var cached))
        {
            output.AddRange(cached);
            return;
        }
        int start = output.Count;
        if (_ignoreMerges && _vocab.TryGetValue(word, out int whole))
            output.Add(whole);
        else
            Merge(word, output);
        if (word.Length <= CacheableLength)
        {
            if (_cache.Count >= CacheLimit) _cache.Clear();
            _cache[word] = output.GetRange(start, output.Count - start).ToArray();
        }
    }

    void Merge(string word, List<int> output)
    {
        // Initial symbols.
        var ids = new List<int>(word.Length);
        bool lastWasUnk = false;
        Span<byte> utf8 = stackalloc byte[4];
        for (int i = 0; i < word.Length;)
        {
            int len = char.IsHighSurrogate(word[i]) && i + 1 < word.Length && char.IsLowSurrogate(word[i + 1]) ? 2 : 1;
            string ch = word.Substring(i, len);
            i += len;
            if (_vocab.TryGetValue(ch, out int id))
            {
                ids.Add(id);
                lastWasUnk = false;
                continue;
            }
            if (_byteTokens is not null)
            {
                int n = System.Text.Encoding.UTF8.GetBytes(ch, utf8);
                bool all = true;
                for (int k = 0; k < n; k++) all &= _byteTokens[utf8[k]] >= 0;
                if (all)
                {
                    for (int k = 0; k < n; k++) ids.Add(_byteTokens[utf8[k]]);
                    lastWasUnk = false;
                    continue;
                }
            }
            if (_unkId is null)
                throw new DotQuantException(ErrorCodes.TokenizerUnsupported, $"character U+{char.ConvertToUtf32(ch, 0):X4} is not in the vocabulary and the tokenizer has no unk_token");
            if (!(_fuseUnk && lastWasUnk)) ids.Add(_unkId.Value);
            lastWasUnk = true;
        }

        int count = ids.Count;
        var sym = ids.ToArray();
        var prev = new int[count];
        var next = new int[count];
        var alive = new bool[count];
        for (int i = 0; i < count; i++) { prev[i] = i - 1; next[i] = i + 1 < count ? i + 1 : -1; alive[i] = true; }

        var queue = new PriorityQueue<(int Pos, int NewId), (int Rank, int Pos)>();
        for (int i = 0; i + 1 < count; i++)
            if (_merges.TryGetValue((sym[i], sym[i + 1]), out var m))
                queue.Enqueue((i, m.NewId), (m.Rank, i));

        while (queue.TryDequeue(out var top, out _))
        {
            int pos = top.Pos;
            if (!alive[pos] || next[pos] < 0) continue;
            int right = next[pos];
            // Skip stale entries: the pair at pos must still produce this merge.
            if (!_merges.TryGetValue((sym[pos], sym[right]), out var current) || current.NewId != top.NewId) continue;

            sym[pos] = top.NewId;
            alive[right] = false;
            next[pos] = next[right];
            if (next[right] >= 0) prev[next[right]] = pos;

            if (prev[pos] >= 0 && _merges.TryGetValue((sym[prev[pos]], sym[pos]), out var left))
                queue.Enqueue((prev[pos], left.NewId), (left.Rank, prev[pos]));
            if (next[pos] >= 0 && _merges.TryGetValue((sym[pos], sym[next[pos]]), out var after))
                queue.Enqueue((pos, after.NewId), (after.Rank, pos));
        }

        for (int i = 0; i < count; i++)
            if (alive[i]) output.Add(sym[i]);
    }
}
