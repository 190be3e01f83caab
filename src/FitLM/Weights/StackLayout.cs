using FitLM.Formats;
using FitLM.Model;
using FitLM.Tensors;

namespace FitLM.Weights;

/// <summary>One stacked (BitStack-decomposed) weight matrix of a stacked file.</summary>
public sealed record StackMatrixInfo(int Index, string Name, int Rows, int Cols, int Rank, int Blocks)
{
    public long BlockBytes => StackBlock.BytesOf(Rows, Cols, Rank);
    public int Layer => TensorNames.LayerOf(Name);
}

/// <summary>Position <see cref="Position"/> of the global stack: block <see cref="Block"/> of matrix <see cref="Matrix"/>, and its tensors.</summary>
public sealed record StackEntry(int Position, int Matrix, int Block, GgufTensorInfo Sign, GgufTensorInfo U, GgufTensorInfo V, long Bytes, float Score);

/// <summary>
/// The layout of a stacked GGUF (docs/bitstack.md): FitLM metadata naming the stacked matrices, their rank and
/// block count, and the global order of blocks; per block three tensors (sign bits, U, V). Everything else in
/// the file is a conventional tensor (embeddings, head, norms). Reading checks every name, shape, type and
/// count against the model configuration, so a corrupt or truncated file fails here with a clear message.
/// </summary>
public sealed class StackLayout
{
    public const string MethodKey = GgufSource.StackMethodKey;
    public const string VersionKey = "fitlm.stack.version";
    public const string MatricesKey = "fitlm.stack.matrices";
    public const string RanksKey = "fitlm.stack.ranks";
    public const string BlocksKey = "fitlm.stack.blocks";
    public const string OrderKey = "fitlm.stack.order";
    public const string ScoresKey = "fitlm.stack.scores";
    public const string CalibrationKey = "fitlm.stack.calibration";
    public const string Method = "bitstack";
    public const uint Version = 1;

    /// <summary>The linear weights of a transformer block that BitStack decomposes, in the order written.</summary>
    public static readonly string[] LinearNames = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

    public static string SignName(string matrix, int block) => $"{matrix}.{block}.sign";
    public static string UName(string matrix, int block) => $"{matrix}.{block}.u";
    public static string VName(string matrix, int block) => $"{matrix}.{block}.v";

    public string Path { get; }
    public IReadOnlyList<StackMatrixInfo> Matrices { get; }
    public IReadOnlyList<StackEntry> Entries { get; }
    /// <summary>Bytes of the conventional tensors (embeddings, head, norms): every size includes them.</summary>
    public long FixedBytes { get; }
    /// <summary>Stack positions before which every matrix has at least one block: the smallest model that is whole.</summary>
    public int BaseEntries { get; }
    public string Calibration { get; }
    /// <summary>Parameters of the model: conventional tensors plus the logical shapes of the stacked matrices (not their block tensors).</summary>
    public long Parameters { get; }
    /// <summary>
    /// Bytes of conventional tensors a decoded token multiplies: all of them, except that an embedding table with
    /// a separate output head is only looked up (one row per token).
    /// </summary>
    public long FixedBytesPerToken { get; }
    private readonly long[] _prefixBytes;
    private readonly Dictionary<string, int> _byName;

    private StackLayout(string path, List<StackMatrixInfo> matrices, List<StackEntry> entries, long fixedBytes, long fixedPerToken, string calibration, long parameters)
    {
        FixedBytesPerToken = fixedPerToken;
        Path = path;
        Matrices = matrices;
        Entries = entries;
        FixedBytes = fixedBytes;
        Calibration = calibration;
        Parameters = parameters;
        _byName = matrices.ToDictionary(m => m.Name, m => m.Index);
        _prefixBytes = new long[entries.Count + 1];
        for (int i = 0; i < entries.Count; i++) _prefixBytes[i + 1] = _prefixBytes[i] + entries[i].Bytes;
        var seen = new bool[matrices.Count];
        int missing = matrices.Count, pos = 0;
        while (missing > 0 && pos < entries.Count)
        {
            if (!seen[entries[pos].Matrix]) { seen[entries[pos].Matrix] = true; missing--; }
            pos++;
        }
        BaseEntries = pos;
    }

    public static bool IsStacked(GgufFile f) => GgufSource.IsStacked(f);

    public static bool IsStacked(IModelSource source) => source is GgufSource g && IsStacked(g.File);

    public int IndexOf(string matrix) => _byName.TryGetValue(matrix, out int i) ? i : -1;

    /// <summary>Weight bytes (conventional tensors + the first <paramref name="entries"/> blocks).</summary>
    public long BytesAt(int entries) => FixedBytes + _prefixBytes[Math.Clamp(entries, 0, Entries.Count)];

    /// <summary>Bytes of blocks at positions [from, to).</summary>
    public long BlockBytesBetween(int from, int to) => _prefixBytes[to] - _prefixBytes[from];

    /// <summary>The longest prefix whose weight bytes fit <paramref name="weightBytes"/> (−1 when not even the conventional tensors fit).</summary>
    public int EntriesFor(long weightBytes)
    {
        if (weightBytes < FixedBytes) return -1;
        long room = weightBytes - FixedBytes;
        int lo = 0, hi = Entries.Count;
        while (lo < hi)
        {
            int mid = (lo + hi + 1) / 2;
            if (_prefixBytes[mid] <= room) lo = mid; else hi = mid - 1;
        }
        return lo;
    }

    /// <summary>Blocks of each matrix in the first <paramref name="entries"/> positions.</summary>
    public int[] CountsAt(int entries)
    {
        var counts = new int[Matrices.Count];
        for (int i = 0; i < Math.Min(entries, Entries.Count); i++) counts[Entries[i].Matrix]++;
        return counts;
    }

    /// <summary>Bits per weight of the stacked matrices at <paramref name="entries"/> positions.</summary>
    public double StackBitsPerWeight(int entries) =>
        BlockBytesBetween(0, Math.Clamp(entries, 0, Entries.Count)) * 8.0 / Math.Max(1, Matrices.Sum(m => (long)m.Rows * m.Cols));

    /// <summary>Bits per weight over every parameter of the model at <paramref name="entries"/> positions.</summary>
    public double TotalBitsPerWeight(int entries) => BytesAt(entries) * 8.0 / Math.Max(1, Parameters);

    /// <summary>Position of the first entry of a matrix's block, or −1.</summary>
    public int PositionOf(int matrix, int block)
    {
        foreach (var e in Entries) if (e.Matrix == matrix && e.Block == block) return e.Position;
        return -1;
    }

    /// <summary>(rows, cols) a linear weight of this name must have, or null when the name is not one BitStack stacks.</summary>
    public static (int Rows, int Cols)? ExpectedShape(string name, ModelConfig c)
    {
        int layer = TensorNames.LayerOf(name);
        if (layer < 0 || layer >= c.Layers || !name.EndsWith(".weight", StringComparison.Ordinal)) return null;
        string kind = name[(name.IndexOf('.', 4) + 1)..^".weight".Length];
        return kind switch
        {
            "attn_q" => (c.QDim, c.Dim),
            "attn_k" or "attn_v" => (c.KvDim, c.Dim),
            "attn_output" => (c.Dim, c.QDim),
            "ffn_gate" or "ffn_up" => (c.FfnDim, c.Dim),
            "ffn_down" => (c.Dim, c.FfnDim),
            _ => null,
        };
    }

    /// <summary>Reads and checks the stack of a GGUF source; throws <see cref="FitLMException"/> naming the problem.</summary>
    public static StackLayout Read(GgufSource source)
    {
        var f = source.File;
        var c = source.Config;
        string path = f.Path;
        FitLMException Error(string m) => new($"{path}: stacked file: {m}");
        string method = Get(MethodKey).Value as string ?? throw Error($"{MethodKey} is not a string");
        if (method != Method) throw Error($"unknown stack method '{method}' (this FitLM reads '{Method}')");
        long version = Int(VersionKey);
        if (version != Version) throw Error($"stack format version {version} is not supported (this FitLM reads version {Version})");
        string[] names = Get(MatricesKey).Value as string[] ?? throw Error($"{MatricesKey} is not an array of strings");
        if (names.Length == 0) throw Error("no stacked matrices");
        int[] ranks = IntArray(RanksKey);
        long blocksL = Int(BlocksKey);
        if (blocksL is < 1 or > 64) throw Error($"{BlocksKey} {blocksL} is out of range (1..64)");
        int blocks = (int)blocksL;
        if (ranks.Length != names.Length) throw Error($"{RanksKey} has {ranks.Length} entries for {names.Length} matrices");
        int[] order = IntArray(OrderKey);
        if (order.LongLength != (long)names.Length * blocks)
            throw Error($"{OrderKey} has {order.Length} entries; {names.Length} matrices × {blocks} blocks need {(long)names.Length * blocks}");
        float[]? scores = f.Find(ScoresKey) is { } sv ? sv.Value as float[] ?? throw Error($"{ScoresKey} is not an array of float32") : null;
        if (scores != null && scores.Length != order.Length) throw Error($"{ScoresKey} has {scores.Length} entries for {order.Length} stack positions");

        var matrices = new List<StackMatrixInfo>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < names.Length; i++)
        {
            string n = names[i];
            if (!seen.Add(n)) throw Error($"matrix '{n}' is listed twice");
            var shape = ExpectedShape(n, c) ?? throw Error($"'{n}' is not a linear weight of a {c.Layers}-layer {c.Architecture} model");
            if (source.Find(n) != null) throw Error($"'{n}' is both stacked and stored as a conventional tensor");
            if (ranks[i] < 1 || ranks[i] > Math.Min(shape.Rows, shape.Cols)) throw Error($"rank {ranks[i]} of '{n}' is out of range");
            if (shape.Cols % 16 != 0) throw Error($"'{n}' has {shape.Cols} columns, not a multiple of 16");
            matrices.Add(new StackMatrixInfo(i, n, shape.Rows, shape.Cols, ranks[i], blocks));
        }

        var next = new int[names.Length];
        var entries = new List<StackEntry>(order.Length);
        for (int pos = 0; pos < order.Length; pos++)
        {
            int m = order[pos];
            if ((uint)m >= (uint)names.Length) throw Error($"{OrderKey}[{pos}] = {m} names no matrix (0..{names.Length - 1})");
            int b = next[m]++;
            if (b >= blocks) throw Error($"{OrderKey} lists matrix '{names[m]}' more than {blocks} times");
            var mi = matrices[m];
            var s = Tensor(SignName(mi.Name, b), [mi.Cols / 16, mi.Rows]);
            var u = Tensor(UName(mi.Name, b), [mi.Rank, mi.Rows]);
            var v = Tensor(VName(mi.Name, b), [mi.Rank, mi.Cols]);
            entries.Add(new StackEntry(pos, m, b, s, u, v, s.ByteSize + u.ByteSize + v.ByteSize, scores?[pos] ?? float.NaN));
        }
        // Each list entry was counted; a short count is impossible after the length check, but say so if it happens.
        for (int m = 0; m < names.Length; m++)
            if (next[m] != blocks) throw Error($"{OrderKey} lists matrix '{names[m]}' {next[m]} times, not {blocks}");

        var stackTensors = new HashSet<string>(entries.SelectMany(e => new[] { e.Sign.Name, e.U.Name, e.V.Name }), StringComparer.Ordinal);
        var stray = f.Tensors.FirstOrDefault(t => !stackTensors.Contains(t.Name) && seen.Any(n => t.Name.StartsWith(n + ".", StringComparison.Ordinal)));
        if (stray != null) throw Error($"tensor '{stray.Name}' belongs to no stack position");
        var conventional = f.Tensors.Where(t => !stackTensors.Contains(t.Name)).ToList();
        long fixedBytes = conventional.Sum(t => t.ByteSize);
        bool separateHead = f.FindTensor("output.weight") != null;
        long fixedPerToken = conventional.Sum(t => t.Name == "token_embd.weight" && separateHead ? t.ByteSize / Math.Max(1, t.Rows) : t.ByteSize);
        // Every linear weight the decoder asks for must be stacked or stored.
        for (int l = 0; l < c.Layers; l++)
            foreach (var kind in LinearNames)
            {
                string n = $"blk.{l}.{kind}.weight";
                if (!seen.Contains(n) && source.Find(n) == null) throw Error($"tensor '{n}' is neither stacked nor stored");
            }
        long parameters = conventional.Sum(t => t.Elements) + matrices.Sum(m => (long)m.Rows * m.Cols);
        string calibration = f.Find(CalibrationKey)?.Value as string ?? "";
        return new StackLayout(path, matrices, entries, fixedBytes, fixedPerToken, calibration, parameters);

        GgufValue Get(string key) => f.Find(key) ?? throw Error($"metadata '{key}' is missing");
        long Int(string key)
        {
            var v = Get(key);
            if (!v.IsInteger) throw Error($"{key} is not an integer");
            return v.AsInt64();
        }
        int[] IntArray(string key)
        {
            var v = Get(key);
            return v.Value is int[] a ? a : throw Error($"{key} is not an array of int32");
        }
        GgufTensorInfo Tensor(string name, long[] shape)
        {
            var t = f.FindTensor(name) ?? throw Error($"tensor '{name}' is missing");
            if (t.Type != GgmlType.F16) throw Error($"tensor '{name}' has type {t.Type}, expected F16");
            if (!t.Shape.SequenceEqual(shape)) throw Error($"tensor '{name}' has shape {t.ShapeText}, expected [{string.Join(", ", shape)}]");
            return t;
        }
    }
}
