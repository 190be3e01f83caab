using System.Buffers.Binary;
using System.Text;
using FitLM.Formats;
using FitLM.Tensors;

namespace FitLM.Conversion;

/// <summary>
/// llama.cpp's importance matrix (llama-imatrix's output): for each weight, the mean squared activation of
/// each of its input columns over a calibration text. Read from either of llama.cpp's formats, normalized
/// as llama-quantize's load_imatrix does:
/// <list type="bullet">
/// <item>GGUF (general.type "imatrix"): per weight W a tensor W.in_sum2 (ne0 x experts, sums of x^2) and
/// W.counts (1 x experts, tokens seen); the value is in_sum2 / count, or 1 where count is 0;
/// imatrix.datasets and imatrix.chunk_count describe the calibration.</item>
/// <item>legacy .dat: int32 entries, then per entry int32 name length, name, int32 ncall, int32 n, n floats
/// (sums scaled by ncall); the value is sum / ncall; optionally followed by int32 chunk count and the dataset
/// name.</item>
/// </list>
/// </summary>
public sealed class ImportanceMatrix
{
    /// <summary>Per weight name, one value per input column (per expert: ne0 * experts values).</summary>
    public IReadOnlyDictionary<string, float[]> Entries { get; }
    public IReadOnlyList<string> Datasets { get; }
    /// <summary>Calibration chunks the matrix was computed on (0 when the file does not say).</summary>
    public int ChunkCount { get; }
    public string Path { get; }

    private ImportanceMatrix(string path, Dictionary<string, float[]> entries, List<string> datasets, int chunks)
    {
        Path = path;
        Entries = entries;
        Datasets = datasets;
        ChunkCount = chunks;
    }

    /// <summary>The values for weight <paramref name="name"/>, or null when the matrix has none.</summary>
    public float[]? Find(string name) => Entries.GetValueOrDefault(name);

    /// <summary>Reads either format (told apart by the GGUF magic).</summary>
    public static ImportanceMatrix Load(string path)
    {
        if (string.IsNullOrWhiteSpace(path)) throw new FitLMException("no importance matrix file given");
        if (Directory.Exists(path)) throw new FitLMException($"{path}: is a folder; --imatrix needs an imatrix file (GGUF or .dat)");
        if (!File.Exists(path)) throw new FitLMException($"{path}: no such importance matrix file");
        Span<byte> magic = stackalloc byte[4];
        using (var f = File.OpenRead(path))
        {
            if (f.ReadAtLeast(magic, 4, throwOnEndOfStream: false) < 4)
                throw new FitLMException($"{path}: too short to be an importance matrix");
        }
        var m = BinaryPrimitives.ReadUInt32LittleEndian(magic) == GgufFile.Magic ? LoadGguf(path) : LoadLegacy(path);
        foreach (var (name, values) in m.Entries)
            if (values.Any(v => !float.IsFinite(v)))
                throw new FitLMException($"{path}: the importance matrix of '{name}' holds a non-finite value");
        return m;
    }

    private static ImportanceMatrix LoadGguf(string path)
    {
        using var g = GgufFile.Open(path);
        var sums = new Dictionary<string, GgufTensorInfo>(StringComparer.Ordinal);
        var counts = new Dictionary<string, GgufTensorInfo>(StringComparer.Ordinal);
        foreach (var t in g.Tensors)
        {
            if (t.Name.EndsWith(".in_sum2", StringComparison.Ordinal)) sums[t.Name[..^".in_sum2".Length]] = t;
            else if (t.Name.EndsWith(".counts", StringComparison.Ordinal)) counts[t.Name[..^".counts".Length]] = t;
        }
        if (sums.Count == 0) throw new FitLMException($"{path}: a GGUF file without importance data (no *.in_sum2 tensors); is it a model?");
        var entries = new Dictionary<string, float[]>(StringComparer.Ordinal);
        foreach (var (name, s) in sums)
        {
            if (!counts.TryGetValue(name, out var c)) throw new FitLMException($"{path}: '{name}.in_sum2' has no '{name}.counts'");
            float[] sum = ReadF32(g, s), count = ReadF32(g, c);
            if (count.Length == 0 || sum.Length % count.Length != 0)
                throw new FitLMException($"{path}: '{name}' has {sum.Length} sums for {count.Length} counts");
            int ne0 = sum.Length / count.Length;
            var e = new float[sum.Length];
            for (int j = 0; j < count.Length; j++)
                for (int i = 0; i < ne0; i++)
                    e[j * ne0 + i] = count[j] > 0 ? sum[j * ne0 + i] / count[j] : 1f;
            entries[name] = e;
        }
        var datasets = g.Find("imatrix.datasets") is { Type: GgufValueType.Array, ElementType: GgufValueType.String } d
            ? d.AsStringArray().ToList() : [];
        return new ImportanceMatrix(path, entries, datasets, (int)g.GetInt("imatrix.chunk_count", 0));
    }

    private static float[] ReadF32(GgufFile g, GgufTensorInfo t)
    {
        if (t.Type != GgmlType.F32) throw new FitLMException($"{g.Path}: '{t.Name}' is {t.Type}; importance data must be F32");
        if (t.Elements > int.MaxValue / 4) throw new FitLMException($"{g.Path}: '{t.Name}' is too large");
        var bytes = new byte[t.Elements * 4];
        g.ReadTensorBytes(t, 0, bytes);
        var f = new float[t.Elements];
        Buffer.BlockCopy(bytes, 0, f, 0, bytes.Length);
        return f;
    }

    private static ImportanceMatrix LoadLegacy(string path)
    {
        var data = File.ReadAllBytes(path);
        int pos = 0;
        FitLMException Bad(string what) => new($"{path}: not an importance matrix ({what} at byte {pos}); give llama-imatrix's .dat or GGUF output");
        int I32()
        {
            if (pos + 4 > data.Length) throw Bad("truncated");
            int v = BinaryPrimitives.ReadInt32LittleEndian(data.AsSpan(pos));
            pos += 4;
            return v;
        }
        string Str(int len)
        {
            if (len < 0 || len > 4096 || pos + len > data.Length) throw Bad($"a name of {len} bytes");
            var s = Encoding.UTF8.GetString(data, pos, len);
            pos += len;
            return s;
        }
        int n = I32();
        if (n < 1 || n > 1 << 20) throw Bad($"{n} entries");
        var entries = new Dictionary<string, float[]>(StringComparer.Ordinal);
        for (int k = 0; k < n; k++)
        {
            string name = Str(I32());
            int ncall = I32();
            int nval = I32();
            if (nval < 1 || pos + (long)nval * 4 > data.Length) throw Bad($"{nval} values for '{name}'");
            var e = new float[nval];
            Buffer.BlockCopy(data, pos, e, 0, nval * 4);
            pos += nval * 4;
            if (ncall > 0)
                for (int i = 0; i < nval; i++) e[i] /= ncall;
            entries[name] = e;
        }
        int chunks = 0;
        var datasets = new List<string>();
        if (pos + 4 <= data.Length)
        {
            chunks = I32();
            if (pos + 4 <= data.Length) datasets.Add(Str(I32()));
        }
        return new ImportanceMatrix(path, entries, datasets, chunks);
    }
}
