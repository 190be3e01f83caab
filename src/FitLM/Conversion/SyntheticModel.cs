using FitLM.Runtime;
using FitLM.Model;
using FitLM.Formats;
using FitLM.Tensors;

namespace FitLM.Conversion;

/// <summary>How a synthetic model normalizes Q and K before RoPE.</summary>
public enum SyntheticQkNorm
{
    None,
    /// <summary>attn_q_norm / attn_k_norm of [HeadDim], shared by the heads (Qwen3, Qwen3-MoE).</summary>
    PerHead,
    /// <summary>attn_q_norm [QDim], attn_k_norm [KvDim] over the whole projection (OLMoE).</summary>
    WholeRow,
}

/// <summary>Shapes of real models, for random-weight files that benchmark like the real thing.</summary>
public sealed record SyntheticShape(string Name, int Dim, int Layers, int Heads, int KvHeads, int FfnDim)
{
    /// <summary>general.architecture, as llama.cpp names it (the keys are "{arch}.*").</summary>
    public string Architecture { get; init; } = "llama";
    /// <summary>Width of a head; 0: Dim / Heads (written as attention.key_length where it differs).</summary>
    public int HeadDim { get; init; }
    /// <summary>Routed experts per layer (0: a dense FFN).</summary>
    public int Experts { get; init; }
    /// <summary>Experts a token runs (top-k).</summary>
    public int ExpertsUsed { get; init; }
    /// <summary>Width of one expert's FFN; 0: <see cref="FfnDim"/> (no expert_feed_forward_length key, as OLMoE's files).</summary>
    public int ExpertFfnDim { get; init; }
    public SyntheticQkNorm QkNorm { get; init; }
    public int ContextLength { get; init; } = 4096;
    public float RopeTheta { get; init; } = 10000f;
    public float RmsEps { get; init; } = 1e-5f;

    public int HeadDimension => HeadDim > 0 ? HeadDim : Dim / Heads;
    public int ExpertWidth => ExpertFfnDim > 0 ? ExpertFfnDim : FfnDim;
    public bool IsMoe => Experts > 0;

    public static readonly SyntheticShape[] Known =
    [
        new("llama-0.8b", 2048, 16, 32, 4, 5632),
        new("llama-7b", 4096, 32, 32, 32, 11008),
        new("tiny", 256, 2, 4, 2, 512),
        // For the GPU test run: llama-7b's and Gemma's head widths (128, 256), whose attention kernels read a row a load.
        new("tiny-h128", 256, 2, 2, 1, 512),
        new("tiny-h256", 512, 2, 2, 1, 512),
        // OLMoE-1B-7B (allenai/OLMoE-1B-7B-0924): 64 experts of 1024, top-8, Q/K norms over the whole projection.
        new("olmoe-7b", 2048, 16, 16, 16, 1024)
        {
            Architecture = "olmoe", HeadDim = 128, Experts = 64, ExpertsUsed = 8, QkNorm = SyntheticQkNorm.WholeRow,
        },
        // Qwen3-30B-A3B: 128 experts of 768, top-8, 32 query heads of 128 over a 2048 embedding, per-head Q/K norms.
        new("qwen3-30b-a3b", 2048, 48, 32, 4, 6144)
        {
            Architecture = "qwen3moe", HeadDim = 128, Experts = 128, ExpertsUsed = 8, ExpertFfnDim = 768, QkNorm = SyntheticQkNorm.PerHead,
            ContextLength = 40960, RopeTheta = 1e6f, RmsEps = 1e-6f,
        },
        // For tests: a Qwen3-MoE of 8 experts of 128, top-2.
        new("tiny-moe", 256, 2, 4, 2, 512)
        {
            Architecture = "qwen3moe", Experts = 8, ExpertsUsed = 2, ExpertFfnDim = 128, QkNorm = SyntheticQkNorm.PerHead,
        },
    ];

    public static SyntheticShape Parse(string name) =>
        Known.FirstOrDefault(s => s.Name == name)
        ?? throw new FitLMException($"unknown shape '{name}' (known: {string.Join(", ", Known.Select(s => s.Name))})");

    /// <summary>One line for help texts.</summary>
    public string Description =>
        $"{Name} ({(Architecture == "llama" ? "" : Architecture + ", ")}hidden {Dim}, {Layers} layers, {Heads} heads, {KvHeads} KV heads, " +
        (IsMoe ? $"{Experts} experts of {ExpertWidth}, top-{ExpertsUsed})" : $"FFN {FfnDim})");
}

/// <summary>
/// Writes a random-weight GGUF at a real model's shapes (llama, or a mixture of experts as OLMoE and Qwen3-MoE),
/// with tensor names, metadata and per-tensor types as llama.cpp's converter and llama-quantize would produce
/// for the chosen file type (<see cref="TensorTypeMix"/>), so llama.cpp loads it too.
/// Weights are normal with std 0.02 (norm weights 1 ± 0.02), generated per row from a seeded counter-based
/// generator: the file is the same whatever the thread count, and it is written tensor by tensor.
/// </summary>
public static class SyntheticModel
{
    /// <summary>File types as llama.cpp names and numbers them (LLAMA_FTYPE_*).</summary>
    public static readonly string[] FileTypes = ["f32", "f16", "q8_0", "q4_0", "q4_k_m"];

    private static QuantizationType FileType(string ftype) =>
        FileTypes.Contains(ftype) ? QuantizationType.Parse(ftype)
        : throw new FitLMException($"unknown type '{ftype}' (known: {string.Join(", ", FileTypes)})");

    public sealed record Result(string Path, int Tensors, long Parameters, long Bytes);

    public static Result Write(string outPath, SyntheticShape shape, string ftype, string vocabGguf, ulong seed = 42,
        Action<long, long>? progress = null, CancellationToken ct = default)
    {
        var fileType = FileType(ftype);
        using var vocab = GgufFile.Open(vocabGguf);
        var tokens = vocab.Find("tokenizer.ggml.tokens")?.AsStringArray()
            ?? throw new FitLMException($"{vocabGguf}: no tokenizer.ggml.tokens (not a vocabulary GGUF)");
        int nVocab = tokens.Length;
        var tensors = Tensors(shape, nVocab);
        var types = Types(shape, fileType, tensors);

        using var w = new GgufWriter(outPath, GgufWriter.DefaultAlignment, ct);
        string a = shape.Architecture;
        int headDim = shape.HeadDimension;
        w.AddString("general.architecture", a);
        w.AddString("general.name", $"fitlm-synth-{shape.Name}-{ftype}");
        w.AddUInt32($"{a}.context_length", (uint)shape.ContextLength);
        w.AddUInt32($"{a}.embedding_length", (uint)shape.Dim);
        w.AddUInt32($"{a}.block_count", (uint)shape.Layers);
        w.AddUInt32($"{a}.feed_forward_length", (uint)shape.FfnDim);
        w.AddUInt32($"{a}.attention.head_count", (uint)shape.Heads);
        w.AddUInt32($"{a}.attention.head_count_kv", (uint)shape.KvHeads);
        if (headDim != shape.Dim / shape.Heads)
        {
            w.AddUInt32($"{a}.attention.key_length", (uint)headDim);
            w.AddUInt32($"{a}.attention.value_length", (uint)headDim);
        }
        w.AddFloat32($"{a}.attention.layer_norm_rms_epsilon", shape.RmsEps);
        w.AddFloat32($"{a}.rope.freq_base", shape.RopeTheta);
        w.AddUInt32($"{a}.rope.dimension_count", (uint)headDim);
        if (shape.IsMoe)
        {
            // llama.cpp's LLM_KV_EXPERT_*: OLMoE's converter writes no expert width (its experts are feed_forward_length wide).
            w.AddUInt32($"{a}.expert_count", (uint)shape.Experts);
            w.AddUInt32($"{a}.expert_used_count", (uint)shape.ExpertsUsed);
            if (shape.ExpertFfnDim > 0) w.AddUInt32($"{a}.expert_feed_forward_length", (uint)shape.ExpertFfnDim);
        }
        w.AddUInt32($"{a}.vocab_size", (uint)nVocab);
        w.AddUInt32("general.file_type", fileType.FileType);
        w.AddUInt32("general.quantization_version", 2);
        foreach (var key in vocab.MetadataKeys.Where(k => k.StartsWith("tokenizer.", StringComparison.Ordinal)))
            w.Add(key, vocab.Metadata[key]);
        for (int i = 0; i < tensors.Count; i++) w.AddTensor(tensors[i].Name, tensors[i].Shape, types[i]);

        long total = tensors.Select((t, i) => GgmlTypes.RowBytes(types[i], t.Shape[0]) * Rows(t.Shape)).Sum();
        long done = 0;
        for (int ti = 0; ti < tensors.Count; ti++)
        {
            var (name, dims, norm) = tensors[ti];
            var type = types[ti];
            int cols = (int)dims[0];
            int rows = (int)Rows(dims);
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
                    var rng = SplitMixNormal.Keyed(seed, (ulong)ti, (ulong)(r0 + i));
                    for (int c = 0; c < cols; c++) row[c] = norm ? 1f + 0.02f * rng.NextNormal() : 0.02f * rng.NextNormal();
                    Quantize.Row(type, row, slab.AsSpan(i * rowBytes, rowBytes));
                    return row;
                }, _ => { });
                w.WriteTensorData(slab.AsSpan(0, count * rowBytes));
                done += (long)count * rowBytes;
                progress?.Invoke(done, total);
            }
        }
        w.Complete();
        return new Result(outPath, tensors.Count, tensors.Sum(t => t.Shape.Aggregate(1L, (x, y) => x * y)), new FileInfo(outPath).Length);
    }

    /// <summary>The tensors a file of <paramref name="shape"/> and <paramref name="ftype"/> holds, in order: names, [ne0, ne1, ne2] and types.</summary>
    public static IReadOnlyList<(string Name, long[] Shape, GgmlType Type)> Layout(SyntheticShape shape, string ftype, int vocab)
    {
        var tensors = Tensors(shape, vocab);
        var types = Types(shape, FileType(ftype), tensors);
        return tensors.Select((t, i) => (t.Name, t.Shape, types[i])).ToList();
    }

    /// <summary>llama-quantize's choice for each tensor, from an F32 original (norms and routers stay F32).</summary>
    private static GgmlType[] Types(SyntheticShape shape, QuantizationType fileType, List<(string Name, long[] Shape, bool Norm)> tensors)
    {
        var mix = new TensorTypeMix(fileType, new QuantizationShape(shape.Architecture, shape.Layers, shape.Heads, shape.KvHeads, shape.Experts),
            tensors.Select(t => t.Name), hasImportance: false);
        return tensors.Select(t => mix.Choose(t.Name, t.Shape, GgmlType.F32)).ToArray();
    }

    /// <summary>Rows of a tensor: every dimension but the first (an expert stack's rows run over its experts).</summary>
    private static long Rows(long[] shape) => shape.Skip(1).Aggregate(1L, (x, y) => x * y);

    /// <summary>The tensors of a shape in llama.cpp's names and [ne0, ne1, ne2] order; <c>Norm</c>: a norm weight (1 ± 0.02).</summary>
    private static List<(string Name, long[] Shape, bool Norm)> Tensors(SyntheticShape s, int vocab)
    {
        int headDim = s.HeadDimension, q = s.Heads * headDim, kv = s.KvHeads * headDim;
        var list = new List<(string, long[], bool)>();
        void Add(string name, bool norm, params long[] dims) => list.Add((name, dims, norm));
        Add("token_embd.weight", false, s.Dim, vocab);
        Add("output_norm.weight", true, s.Dim);
        Add("output.weight", false, s.Dim, vocab);
        for (int l = 0; l < s.Layers; l++)
        {
            string p = $"blk.{l}.";
            Add(p + "attn_norm.weight", true, s.Dim);
            Add(p + "attn_q.weight", false, s.Dim, q);
            Add(p + "attn_k.weight", false, s.Dim, kv);
            Add(p + "attn_v.weight", false, s.Dim, kv);
            Add(p + "attn_output.weight", false, q, s.Dim);
            if (s.QkNorm != SyntheticQkNorm.None)
            {
                bool whole = s.QkNorm == SyntheticQkNorm.WholeRow;
                Add(p + "attn_q_norm.weight", true, whole ? q : headDim);
                Add(p + "attn_k_norm.weight", true, whole ? kv : headDim);
            }
            Add(p + "ffn_norm.weight", true, s.Dim);
            if (s.IsMoe)
            {
                int f = s.ExpertWidth;
                Add(p + "ffn_gate_inp.weight", false, s.Dim, s.Experts);
                Add(p + "ffn_gate_exps.weight", false, s.Dim, f, s.Experts);
                Add(p + "ffn_up_exps.weight", false, s.Dim, f, s.Experts);
                Add(p + "ffn_down_exps.weight", false, f, s.Dim, s.Experts);
            }
            else
            {
                Add(p + "ffn_gate.weight", false, s.Dim, s.FfnDim);
                Add(p + "ffn_up.weight", false, s.Dim, s.FfnDim);
                Add(p + "ffn_down.weight", false, s.FfnDim, s.Dim);
            }
        }
        return list;
    }
}
