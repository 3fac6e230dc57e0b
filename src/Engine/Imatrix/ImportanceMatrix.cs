using System.Text;
using DotQuant.Runtime;
using DotQuant.Engine.Gguf;

namespace DotQuant.Engine.Imatrix;

/// <summary>llama.cpp's importance matrix (spec §7): per weight tensor (by its GGUF name) the sums of the
/// squared inputs of every input column, Σ_t x_{t,j}², and the number of token rows summed, as llama-imatrix
/// collects them. Read from and written as llama.cpp's GGUF imatrix (<c>NAME.in_sum2</c> [n, experts] and
/// <c>NAME.counts</c> [1, experts] in F32, <c>imatrix.datasets</c>, <c>imatrix.chunk_count</c>,
/// <c>imatrix.chunk_size</c>) or its legacy .dat (per entry (Σx²/count)·ncall with ncall chunks).</summary>
public sealed class ImportanceMatrix
{
    /// <summary>One tensor's statistics: <see cref="Sums"/> holds experts × columns values, one count per expert.</summary>
    public sealed record Entry(float[] Sums, float[] Counts)
    {
        public int Columns => Sums.Length / Counts.Length;
    }

    public const string DatasetsKey = "imatrix.datasets", ChunkCountKey = "imatrix.chunk_count", ChunkSizeKey = "imatrix.chunk_size";
    const string SumsSuffix = ".in_sum2", CountsSuffix = ".counts";

    /// <summary>Entries by GGUF tensor name, in ordinal name order (llama-imatrix's deterministic order).</summary>
    public IReadOnlyDictionary<string, Entry> Entries { get; }
    public int ChunkCount { get; }
    /// <summary>Tokens per chunk (0 in a legacy file, which does not record it).</summary>
    public int ChunkSize { get; }
    public IReadOnlyList<string> Datasets { get; }
    /// <summary>Read from a legacy .dat: <see cref="Entry.Sums"/> are then (Σx²/count)·ncall and the count is ncall.</summary>
    public bool Legacy { get; }

    public ImportanceMatrix(IReadOnlyDictionary<string, Entry> entries, int chunkCount, int chunkSize, IReadOnlyList<string> datasets, bool legacy = false)
    {
        Entries = new SortedDictionary<string, Entry>(entries.ToDictionary(), StringComparer.Ordinal);
        ChunkCount = chunkCount;
        ChunkSize = chunkSize;
        Datasets = datasets;
        Legacy = legacy;
    }

    /// <summary>The importance llama-quantize uses for <paramref name="name"/>: imp_j = Σx_j²/count in fp32
    /// (1 where an expert was never routed), or null when the file has no entry for it.</summary>
    public float[]? Importance(string name)
    {
        if (!Entries.TryGetValue(name, out var e)) return null;
        var imp = new float[e.Sums.Length];
        int n = e.Columns;
        for (int k = 0; k < e.Counts.Length; k++)
        {
            // llama-quantize rounds GGUF counts to integers (lround) before dividing; legacy counts are ncall.
            float count = Legacy ? e.Counts[k] : MathF.Round(e.Counts[k], MidpointRounding.AwayFromZero);
            for (int j = 0; j < n; j++)
                imp[k * n + j] = count > 0 ? e.Sums[k * n + j] / count : Legacy ? e.Sums[k * n + j] : 1f;
        }
        return imp;
    }

    public static ImportanceMatrix Load(string path)
    {
        if (!File.Exists(path)) throw new DotQuantException(ErrorCodes.FileNotFound, $"importance matrix not found: {path}", path);
        Span<byte> magic = stackalloc byte[4];
        using (var s = File.OpenRead(path))
            if (s.Read(magic) < 4) throw Bad(path, "the file is shorter than any importance matrix");
        return magic.SequenceEqual("GGUF"u8) ? LoadGguf(path) : LoadLegacy(path);
    }

    static ImportanceMatrix LoadGguf(string path)
    {
        using var file = GgufFile.Open(path);
        if (file["general.type"] is { } type && type.Type == GgufValueType.String && type.AsString() != "imatrix")
            throw Bad(path, $"a GGUF of general.type '{type.AsString()}', not an imatrix (a model file given as the importance matrix?)");
        var datasets = file[DatasetsKey] is { Type: GgufValueType.Array, ElementType: GgufValueType.String } d ? d.AsArray<string>() : [];
        int chunkCount = file[ChunkCountKey] is { } cc ? checked((int)cc.AsInteger()) : 0;
        int chunkSize = file[ChunkSizeKey] is { } cs ? checked((int)cs.AsInteger()) : 0;
        if (file[ChunkCountKey] is null || file[ChunkSizeKey] is null || file[DatasetsKey] is null)
            throw Bad(path, $"imatrix metadata missing ({DatasetsKey}, {ChunkCountKey}, {ChunkSizeKey}); llama-quantize refuses such a file too");
        var sums = new Dictionary<string, float[]>(StringComparer.Ordinal);
        var counts = new Dictionary<string, float[]>(StringComparer.Ordinal);
        foreach (var t in file.Tensors)
        {
            bool isSums = t.Name.EndsWith(SumsSuffix, StringComparison.Ordinal), isCounts = t.Name.EndsWith(CountsSuffix, StringComparison.Ordinal);
            if (!isSums && !isCounts) continue;
            if (t.Type != GgmlType.F32) throw Bad(path, $"{t.Name} is {t.Type}, not F32");
            var values = file.Decode(t);
            foreach (float v in values)
                if (!float.IsFinite(v) || v < 0) throw Bad(path, $"{t.Name} holds {v}: sums of squares and counts are finite and non-negative");
            if (isSums) sums[t.Name[..^SumsSuffix.Length]] = values;
            else counts[t.Name[..^CountsSuffix.Length]] = values;
        }
        var entries = new Dictionary<string, Entry>(StringComparer.Ordinal);
        foreach (var name in sums.Keys.Union(counts.Keys))
        {
            if (!sums.TryGetValue(name, out var s) || !counts.TryGetValue(name, out var c))
                throw Bad(path, $"{name} has {(sums.ContainsKey(name) ? "sums without counts" : "counts without sums")}");
            if (c.Length == 0 || s.Length == 0 || s.Length % c.Length != 0)
                throw Bad(path, $"{name}: {s.Length} sums do not divide into {c.Length} experts");
            entries[name] = new Entry(s, c);
        }
        if (entries.Count == 0) throw Bad(path, "no entries (no NAME.in_sum2 / NAME.counts tensors)");
        return new ImportanceMatrix(entries, chunkCount, chunkSize, datasets);
    }

    static ImportanceMatrix LoadLegacy(string path)
    {
        var bytes = File.ReadAllBytes(path);
        int at = 0;
        int Int(string what)
        {
            if (at + 4 > bytes.Length) throw Bad(path, $"truncated at byte {at} (reading {what})");
            int v = BitConverter.ToInt32(bytes, at);
            at += 4;
            return v;
        }
        int n = Int("the entry count");
        if (n < 1 || n > bytes.Length / 12) throw Bad(path, $"{n} entries in {bytes.Length} bytes: not a legacy imatrix (.dat)");
        var entries = new Dictionary<string, Entry>(StringComparer.Ordinal);
        for (int i = 0; i < n; i++)
        {
            int len = Int("a name's length");
            if (len < 1 || len > bytes.Length - at) throw Bad(path, $"entry {i + 1}: a name of {len} bytes at byte {at - 4}");
            string name = Encoding.UTF8.GetString(bytes, at, len);
            at += len;
            int ncall = Int($"{name}'s call count");
            int nval = Int($"{name}'s value count");
            if (ncall < 0 || nval < 1 || (long)nval * 4 > bytes.Length - at) throw Bad(path, $"{name}: {nval} values and {ncall} calls do not fit the file");
            var sums = new float[nval];
            Buffer.BlockCopy(bytes, at, sums, 0, nval * 4);
            at += nval * 4;
            foreach (float v in sums)
                if (!float.IsFinite(v) || v < 0) throw Bad(path, $"{name} holds {v}: sums of squares are finite and non-negative");
            if (!entries.TryAdd(name, new Entry(sums, [ncall]))) throw Bad(path, $"{name} appears twice");
        }
        // The chunk count and dataset name that follow are optional.
        int chunks = 0;
        var datasets = new List<string>();
        if (at + 4 <= bytes.Length)
        {
            chunks = Int("the chunk count");
            if (at + 4 <= bytes.Length)
            {
                int len = Int("the dataset name's length");
                if (len > 0 && len <= bytes.Length - at) datasets.Add(Encoding.UTF8.GetString(bytes, at, len));
            }
        }
        return new ImportanceMatrix(entries, chunks, 0, datasets, legacy: true);
    }

    /// <summary>Writes llama.cpp's GGUF imatrix, or its legacy format when <paramref name="path"/> ends in
    /// .dat, under a temporary name renamed into place (an existing file is replaced only when complete).</summary>
    public void Write(string path)
    {
        if (Legacy) throw new InvalidOperationException("a legacy imatrix holds normalized values; write one collected from sums");
        if (path.EndsWith(".dat", StringComparison.OrdinalIgnoreCase)) WriteLegacy(path);
        else WriteGguf(path);
    }

    void WriteGguf(string path)
    {
        var metadata = new List<KeyValuePair<string, GgufValue>>
        {
            new("general.type", GgufValue.Of("imatrix")),
            new(DatasetsKey, GgufValue.Of(Datasets.ToArray())),
            new(ChunkCountKey, GgufValue.Of((uint)ChunkCount)),
            new(ChunkSizeKey, GgufValue.Of((uint)ChunkSize)),
        };
        var specs = new List<GgufTensorSpec>();
        foreach (var (name, e) in Entries)
        {
            // ggml stores [n, experts] and [1, experts] with trailing ones dropped (ggml_n_dims).
            bool dense = e.Counts.Length == 1;
            specs.Add(new GgufTensorSpec(name + SumsSuffix, dense ? [e.Columns] : [e.Columns, e.Counts.Length], GgmlType.F32));
            specs.Add(new GgufTensorSpec(name + CountsSuffix, dense ? [1] : [1, e.Counts.Length], GgmlType.F32));
        }
        using var writer = new GgufWriter(path, metadata, specs);
        foreach (var e in Entries.Values)
        {
            writer.Append(Bytes(e.Sums));
            writer.Append(Bytes(e.Counts));
        }
        writer.Commit();
    }

    static byte[] Bytes(float[] values)
    {
        var b = new byte[values.Length * 4];
        Buffer.BlockCopy(values, 0, b, 0, b.Length);
        return b;
    }

    /// <summary>llama-imatrix's save_imatrix_legacy: ncall = ⌈max count / chunk size⌉, values (Σx²/count)·ncall.</summary>
    void WriteLegacy(string path)
    {
        string temp = path + $".tmp-{Environment.ProcessId}";
        try
        {
            using (var s = new FileStream(temp, FileMode.Create, FileAccess.Write))
            using (var w = new BinaryWriter(s))
            {
                w.Write(Entries.Count);
                foreach (var (name, e) in Entries)
                {
                    var nameBytes = Encoding.UTF8.GetBytes(name);
                    w.Write(nameBytes.Length);
                    w.Write(nameBytes);
                    int size = Math.Max(1, ChunkSize);
                    int ncall = (int)(((long)e.Counts.Max() + (size - 1)) / size);
                    w.Write(ncall);
                    w.Write(e.Sums.Length);
                    int n = e.Columns;
                    for (int i = 0; i < e.Sums.Length; i++)
                    {
                        float count = e.Counts[i / n], value = e.Sums[i];
                        if (count == 0f) { value = 1f; count = 1f; }
                        w.Write(value / count * ncall);
                    }
                }
                w.Write(ChunkCount);
                var dataset = Encoding.UTF8.GetBytes(Datasets.Count > 0 ? Datasets[^1] : "");
                w.Write(dataset.Length);
                w.Write(dataset);
                s.Flush(true);
            }
            File.Move(temp, path, overwrite: true);
        }
        catch (IOException e)
        {
            throw new DotQuantException(ErrorCodes.OutputWrite, $"could not write {path}: {e.Message}", path);
        }
        finally
        {
            if (File.Exists(temp)) File.Delete(temp);
        }
    }

    static DotQuantException Bad(string path, string why) => new(ErrorCodes.ImatrixFile, $"{Path.GetFileName(path)} is not a usable importance matrix: {why}", path);
}
