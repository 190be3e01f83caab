using FitLM.Model;
using FitLM.Formats;
using FitLM.Tensors;

namespace FitLM.Conversion;

/// <summary>Shapes of real models, for random-weight files that benchmark like the real thing.</summary>
public sealed record SyntheticShape(string Name, int Dim, int Layers, int Heads, int KvHeads, int FfnDim)
{
    public static readonly SyntheticShape[] Known =
    [
        new("llama-0.8b", 2048, 16, 32, 4, 5632),
        new("llama-7b", 4096, 32, 32, 32, 11008),
        new("tiny", 256, 2, 4, 2, 512),
    ];

    public static SyntheticShape Parse(string name) =>
        Known.FirstOrDefault(s => s.Name == name)
        ?? throw new FitLMException($"unknown shape '{name}' (known: {string.Join(", ", Known.Select(s => s.Name))})");
}

/// <summary>
/// Writes a random-weight llama GGUF at a real model's shapes, with tensor names, metadata and per-tensor
/// types as llama.cpp's llama-quantize would produce for the chosen file type, so llama.cpp loads it too.
/// Weights are normal with std 0.02 (norm weights 1 ± 0.02), generated per row from a seeded counter-based
/// generator: the file is the same whatever the thread count, and it is written tensor by tensor.
/// </summary>
public static class SyntheticModel
{
    /// <summary>File types as llama.cpp names and numbers them (LLAMA_FTYPE_*).</summary>
    public static readonly string[] FileTypes = ["f16", "q8_0", "q4_0", "q4_k_m"];

    private static int FtypeNumber(string ftype) => ftype switch
    {
        "f16" => 1, "q4_0" => 2, "q8_0" => 7, "q4_k_m" => 15,
        _ => throw new FitLMException($"unknown type '{ftype}' (known: {string.Join(", ", FileTypes)})"),
    };

    /// <summary>llama.cpp's rule for the layers that get more bits in the _M mixes.</summary>
    private static bool UseMoreBits(int layer, int layers) =>
        layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;

    /// <summary>The type llama-quantize gives a tensor for a file type.</summary>
    public static GgmlType TypeFor(string ftype, string name, int layer, int layers)
    {
        bool matrix = !name.EndsWith("_norm.weight");
        if (!matrix) return GgmlType.F32;
        return ftype switch
        {
            "f16" => GgmlType.F16,
            "q8_0" => GgmlType.Q8_0,
            "q4_0" => name == "output.weight" ? GgmlType.Q6_K : GgmlType.Q4_0,
            "q4_k_m" => name == "output.weight" ? GgmlType.Q6_K
                : (name.EndsWith("attn_v.weight") || name.EndsWith("ffn_down.weight")) && UseMoreBits(layer, layers) ? GgmlType.Q6_K
                : GgmlType.Q4_K,
            _ => throw new FitLMException($"unknown type '{ftype}' (known: {string.Join(", ", FileTypes)})"),
        };
    }

    public sealed record Result(string Path, int Tensors, long Parameters, long Bytes);

    public static Result Write(string outPath, SyntheticShape shape, string ftype, string vocabGguf, ulong seed = 42,
        Action<long, long>? progress = null, CancellationToken ct = default)
    {
        FtypeNumber(ftype);
        using var vocab = GgufFile.Open(vocabGguf);
        var tokens = vocab.Find("tokenizer.ggml.tokens")?.AsStringArray()
            ?? throw new FitLMException($"{vocabGguf}: no tokenizer.ggml.tokens (not a vocabulary GGUF)");
        int nVocab = tokens.Length;
        int headDim = shape.Dim / shape.Heads;

        var tensors = new List<(string name, long[] shape, GgmlType type, bool norm)>();
        void Add(string name, int layer, bool norm, params long[] dims) =>
            tensors.Add((name, dims, TypeFor(ftype, name, layer, shape.Layers), norm));
        Add("token_embd.weight", -1, false, shape.Dim, nVocab);
        Add("output_norm.weight", -1, true, shape.Dim);
        Add("output.weight", -1, false, shape.Dim, nVocab);
        for (int l = 0; l < shape.Layers; l++)
        {
            string p = $"blk.{l}.";
            Add(p + "attn_norm.weight", l, true, shape.Dim);
            Add(p + "attn_q.weight", l, false, shape.Dim, shape.Heads * headDim);
            Add(p + "attn_k.weight", l, false, shape.Dim, shape.KvHeads * headDim);
            Add(p + "attn_v.weight", l, false, shape.Dim, shape.KvHeads * headDim);
            Add(p + "attn_output.weight", l, false, shape.Heads * headDim, shape.Dim);
            Add(p + "ffn_norm.weight", l, true, shape.Dim);
            Add(p + "ffn_gate.weight", l, false, shape.Dim, shape.FfnDim);
            Add(p + "ffn_up.weight", l, false, shape.Dim, shape.FfnDim);
            Add(p + "ffn_down.weight", l, false, shape.FfnDim, shape.Dim);
        }

        using var w = new GgufWriter(outPath, GgufWriter.DefaultAlignment, ct);
        w.AddString("general.architecture", "llama");
        w.AddString("general.name", $"fitlm-synth-{shape.Name}-{ftype}");
        w.AddUInt32("llama.context_length", 4096);
        w.AddUInt32("llama.embedding_length", (uint)shape.Dim);
        w.AddUInt32("llama.block_count", (uint)shape.Layers);
        w.AddUInt32("llama.feed_forward_length", (uint)shape.FfnDim);
        w.AddUInt32("llama.attention.head_count", (uint)shape.Heads);
        w.AddUInt32("llama.attention.head_count_kv", (uint)shape.KvHeads);
        w.AddFloat32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
        w.AddFloat32("llama.rope.freq_base", 10000f);
        w.AddUInt32("llama.rope.dimension_count", (uint)headDim);
        w.AddUInt32("llama.vocab_size", (uint)nVocab);
        w.AddUInt32("general.file_type", (uint)FtypeNumber(ftype));
        w.AddUInt32("general.quantization_version", 2);
        foreach (var key in vocab.MetadataKeys.Where(k => k.StartsWith("tokenizer.", StringComparison.Ordinal)))
            w.Add(key, vocab.Metadata[key]);
        foreach (var t in tensors) w.AddTensor(t.name, t.shape, t.type);

        long total = tensors.Sum(t => GgmlTypes.RowBytes(t.type, t.shape[0]) * (t.shape.Length > 1 ? t.shape[1] : 1));
        long done = 0;
        for (int ti = 0; ti < tensors.Count; ti++)
        {
            var (name, dims, type, norm) = tensors[ti];
            int cols = (int)dims[0];
            int rows = dims.Length > 1 ? (int)dims[1] : 1;
            int rowBytes = (int)GgmlTypes.RowBytes(type, cols);
            w.BeginTensor(name);
            // Rows in slabs of ~16 MiB: generated and quantized in parallel, written in order.
            int slabRows = Math.Max(1, Math.Min(rows, (16 << 20) / Math.Max(1, rowBytes)));
            var slab = new byte[(long)slabRows * rowBytes];
            for (int r0 = 0; r0 < rows; r0 += slabRows)
            {
                ct.ThrowIfCancellationRequested();
                int count = Math.Min(slabRows, rows - r0);
                Parallel.For(0, count, new ParallelOptions { MaxDegreeOfParallelism = MatMul.Threads, CancellationToken = ct }, () => new float[cols], (i, _, row) =>
                {
                    var rng = new CounterNormal(seed, (ulong)ti, (ulong)(r0 + i));
                    for (int c = 0; c < cols; c++) row[c] = norm ? 1f + 0.02f * rng.Next() : 0.02f * rng.Next();
                    Quantize.Row(type, row, slab.AsSpan(i * rowBytes, rowBytes));
                    return row;
                }, _ => { });
                w.WriteTensorData(slab.AsSpan(0, count * rowBytes));
                done += (long)count * rowBytes;
                progress?.Invoke(done, total);
            }
        }
        w.Complete();
        return new Result(outPath, tensors.Count, tensors.Sum(t => t.shape.Aggregate(1L, (a, b) => a * b)), new FileInfo(outPath).Length);
    }

    /// <summary>Standard normal samples from a SplitMix64 stream keyed by (seed, tensor, row), via Box–Muller.</summary>
    private struct CounterNormal(ulong seed, ulong tensor, ulong row)
    {
        private ulong _state = seed * 0x9E3779B97F4A7C15UL ^ (tensor + 1) * 0xBF58476D1CE4E5B9UL ^ (row + 1) * 0x94D049BB133111EBUL;
        private float _spare;
        private bool _hasSpare;

        private ulong NextU64()
        {
            ulong z = _state += 0x9E3779B97F4A7C15UL;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }

        public float Next()
        {
            if (_hasSpare) { _hasSpare = false; return _spare; }
            double u1 = ((NextU64() >> 11) + 1) * (1.0 / 9007199254740993.0); // (0, 1]
            double u2 = (NextU64() >> 11) * (1.0 / 9007199254740992.0);
            double r = Math.Sqrt(-2 * Math.Log(u1));
            _spare = (float)(r * Math.Sin(2 * Math.PI * u2));
            _hasSpare = true;
            return (float)(r * Math.Cos(2 * Math.PI * u2));
        }
    }
}
