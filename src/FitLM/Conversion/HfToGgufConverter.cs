using FitLM.Formats;
using System.Diagnostics;
using System.Text.Json;
using FitLM.Model;
using FitLM.Model.Architectures;
using FitLM.Tensors;
using FitLM.Tokenization;

namespace FitLM.Conversion;

/// <summary>What a conversion wrote.</summary>
public sealed record GgufConversionResult(
    string OutputPath, string Architecture, GgmlType Type, int Tensors, long Bytes, double Seconds,
    IReadOnlyDictionary<GgmlType, int> TensorTypes);

/// <summary>One tensor of the output file: where its data comes from and how it is stored.</summary>
/// <param name="Source">The source tensor, or null for a tensor the converter computes (<paramref name="Data"/>).</param>
/// <param name="PermuteHeads">Heads to permute the rows of for llama.cpp's interleaved RoPE (0: none).</param>
/// <param name="AddOffset">Added to every value as it is written (Gemma's norms: w in transformers, 1 + w in GGUF).</param>
public sealed record PlannedTensor(string Name, TensorDesc? Source, long[] Shape, GgmlType Type, int PermuteHeads, float[]? Data, float AddOffset = 0)
{
    public long Elements => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>
/// Hugging Face folder → GGUF, as llama.cpp's convert_hf_to_gguf.py writes it for every family FitLM runs:
/// llama.cpp's tensor names, metadata keys and tokenizer arrays; 1-D tensors, norms and MoE routers in F32,
/// other weights in the chosen type (F16 where a row does not fill whole Q8_0 blocks); where the family's
/// GGUF RoPE layout is interleaved (llama, mistral, mixtral) the Q and K rows of each head permuted from
/// rotate-half pairs (convert_hf_to_gguf's LlamaModel.permute); experts stacked into one tensor per layer and
/// matrix (the source stacks them); Gemma's norms written as 1 + w; Phi-3's fused QKV and gate-up kept fused.
/// Names, keys and the permutation come from the family's <see cref="ArchitectureFamily"/> description.
/// Tensors stream through one chunk of rows at a time.
/// </summary>
public static class HfToGgufConverter
{
    /// <summary>The output types accepted (convert_hf_to_gguf's --outtype names).</summary>
    public static IReadOnlyList<string> TypeNames { get; } = ["f32", "f16", "bf16", "q8_0"];

    /// <summary>Elements converted per chunk (rounded to whole heads for permuted tensors).</summary>
    private const long ChunkElements = 1 << 22;

    /// <summary>llama.cpp's GGML_QNT_VERSION.</summary>
    public const uint QuantizationVersion = 2;

    public static GgmlType ParseType(string name) => name.Trim().ToLowerInvariant() switch
    {
        "f32" => GgmlType.F32,
        "f16" => GgmlType.F16,
        "bf16" => GgmlType.BF16,
        "q8_0" => GgmlType.Q8_0,
        _ => throw new FitLMException($"unsupported output type '{name}' (supported: {string.Join(", ", TypeNames)})"),
    };

    /// <summary>general.file_type: llama.cpp's LLAMA_FTYPE numbering.</summary>
    public static uint FileType(GgmlType type) => type switch
    {
        GgmlType.F32 => 0,  // LLAMA_FTYPE_ALL_F32
        GgmlType.F16 => 1,  // LLAMA_FTYPE_MOSTLY_F16
        GgmlType.Q8_0 => 7, // LLAMA_FTYPE_MOSTLY_Q8_0
        GgmlType.BF16 => 32, // LLAMA_FTYPE_MOSTLY_BF16
        _ => throw new FitLMException($"unsupported output type {type} (supported: {string.Join(", ", TypeNames)})"),
    };

    /// <summary>general.architecture as llama.cpp writes it for a family (its converter maps MistralForCausalLM to "llama").</summary>
    public static string GgufArchitecture(string architecture) =>
        ArchitectureRegistry.Get(architecture, "model configuration").GgufNameWritten;

    /// <summary>Converts the Hugging Face model folder <paramref name="folder"/> into the GGUF file <paramref name="output"/>.</summary>
    public static GgufConversionResult Convert(string folder, string output, GgmlType type = GgmlType.F16,
        Action<long, long>? progress = null, CancellationToken ct = default)
    {
        if (string.IsNullOrWhiteSpace(folder)) throw new FitLMException("no model folder given");
        if (!Directory.Exists(folder))
            throw new FitLMException(File.Exists(folder)
                ? $"{folder}: is a file; convert needs a Hugging Face model folder (config.json, *.safetensors, tokenizer.json)"
                : $"{folder}: no such folder");
        using var src = HuggingFaceSource.Open(folder);
        return Convert(src, output, type, progress, ct);
    }

    /// <summary>
    /// Converts an open Hugging Face source. <paramref name="progress"/> gets (tensor bytes written, total);
    /// the output appears under its final name only when complete.
    /// </summary>
    public static GgufConversionResult Convert(HuggingFaceSource src, string output, GgmlType type = GgmlType.F16,
        Action<long, long>? progress = null, CancellationToken ct = default)
    {
        var sw = Stopwatch.StartNew();
        FileType(type); // validates the type
        if (string.IsNullOrWhiteSpace(output)) throw new FitLMException("no output file given");
        var plan = Plan(src, type);
        using var w = new GgufWriter(output, GgufWriter.DefaultAlignment, ct);
        AddMetadata(w, src, type);
        foreach (var p in plan) w.AddTensor(p.Name, p.Shape, p.Type);
        long total = w.TensorBytes, done = 0;
        progress?.Invoke(0, total);
        var buffers = new Buffers();
        foreach (var p in plan)
        {
            ct.ThrowIfCancellationRequested();
            w.BeginTensor(p.Name);
            WriteTensor(src, p, w, buffers, n =>
            {
                done += n;
                progress?.Invoke(done, total);
            }, ct);
        }
        w.Complete();
        var types = plan.GroupBy(p => p.Type).ToDictionary(g => g.Key, g => g.Count());
        return new GgufConversionResult(w.Path, GgufArchitecture(src.Config.Architecture), type, plan.Count,
            new FileInfo(w.Path).Length, sw.Elapsed.TotalSeconds, types);
    }

    // ---------------------------------------------------------------- tensors

    /// <summary>
    /// The output tensors in file order (llama-quantize's: tensors outside the blocks first, then block by
    /// block, by name within each), with their types and permutations.
    /// </summary>
    public static IReadOnlyList<PlannedTensor> Plan(HuggingFaceSource src, GgmlType type)
    {
        var c = src.Config;
        var family = c.Family;
        var list = new List<PlannedTensor>();
        foreach (var t in src.Tensors)
        {
            if (GgmlTypes.BlockSize(t.Type) != 1)
                throw new FitLMException($"{src.Path}: tensor '{t.Name}' has type {t.Type}; only F32, F16 and BF16 safetensors can be converted");
            // convert_hf_to_gguf squeezes dimensions of size 1 before choosing the type.
            var shape = t.Shape.Where(n => n != 1).ToArray();
            if (shape.Length == 0) shape = [1];
            // Q/K rows (weights and biases) go from HF's rotate-half pairs to the family's GGUF RoPE layout.
            int heads = family.ConverterPermutesQk ? family.FindTensor(t.Name)?.RopeHeads(c) ?? 0 : 0;
            if (heads > 0)
            {
                long rows = shape.Length == 1 ? shape[0] : t.Elements / shape[0];
                if (rows % (2L * heads) != 0)
                    throw new FitLMException($"{src.Path}: tensor '{t.Name}' has {rows} rows, which {heads} heads of rotate-half pairs cannot split");
            }
            float offset = family.HfNormOffset != 0 && t.Name.EndsWith("norm.weight", StringComparison.Ordinal) ? family.HfNormOffset : 0;
            list.Add(new PlannedTensor(t.Name, t, shape, TensorType(t.Name, shape, type), heads, null, offset));
        }
        if (c.RopeLlama3 is { } l3 && src.Find("rope_freqs.weight") == null)
        {
            var f = Llama3RopeFactors(c.RopeTheta, c.HeadDim, l3);
            list.Add(new PlannedTensor("rope_freqs.weight", null, [f.Length], GgmlType.F32, 0, f));
        }
        list.Sort((a, b) =>
        {
            int la = Layer(a.Name), lb = Layer(b.Name);
            return la != lb ? la.CompareTo(lb) : string.CompareOrdinal(a.Name, b.Name);
        });
        return list;
    }

    /// <summary>convert_hf_to_gguf's choice: F32 for 1-D tensors, norms and MoE routers, the output type for the rest (F16 where blocks do not fit).</summary>
    public static GgmlType TensorType(string name, long[] shape, GgmlType type)
    {
        if (shape.Length <= 1 || name.EndsWith("_norm.weight", StringComparison.Ordinal) || type == GgmlType.F32 ||
            name.EndsWith(".ffn_gate_inp.weight", StringComparison.Ordinal) || name.EndsWith(".ffn_gate_inp_shexp.weight", StringComparison.Ordinal)) return GgmlType.F32;
        // gguf-py raises QuantError for a row that is not whole blocks; the converter then falls back to F16.
        return shape[0] % GgmlTypes.BlockSize(type) == 0 ? type : GgmlType.F16;
    }

    private static int Layer(string name)
    {
        if (!name.StartsWith("blk.", StringComparison.Ordinal)) return -1;
        int end = name.IndexOf('.', 4);
        return end > 4 && int.TryParse(name.AsSpan(4, end - 4), out int l) ? l : -1;
    }

    /// <summary>
    /// LlamaModel.permute(w, n_head, n_head_kv) of convert_hf_to_gguf, on rows: within each head of
    /// <paramref name="headRows"/> rows, row half*(headRows/2)+i moves to 2i+half, so the rotate-half pairs
    /// (i, i+d/2) become adjacent pairs (2i, 2i+1). <paramref name="src"/> holds whole heads.
    /// </summary>
    public static void PermuteForInterleavedRope(ReadOnlySpan<float> src, Span<float> dst, int rowLength, int headRows)
    {
        if (rowLength <= 0 || headRows <= 0 || headRows % 2 != 0) throw new ArgumentException("head rows must be a positive even number");
        long headElems = (long)headRows * rowLength;
        if (src.Length % headElems != 0 || dst.Length < src.Length) throw new ArgumentException("the data is not whole heads");
        int half = headRows / 2;
        for (long h0 = 0; h0 < src.Length; h0 += headElems)
            for (int part = 0; part < 2; part++)
                for (int i = 0; i < half; i++)
                    src.Slice((int)(h0 + (long)(part * half + i) * rowLength), rowLength)
                        .CopyTo(dst.Slice((int)(h0 + (long)(2 * i + part) * rowLength), rowLength));
    }

    /// <summary>rope_freqs.weight for "rope_type": "llama3", as LlamaModel.generate_extra_tensors computes it (float32).</summary>
    public static float[] Llama3RopeFactors(float theta, int headDim, Llama3RopeScaling s)
    {
        var result = new float[headDim / 2];
        float lowWavelen = (float)((double)s.OriginalContext / s.LowFreqFactor);
        float highWavelen = (float)((double)s.OriginalContext / s.HighFreqFactor);
        for (int i = 0; i < result.Length; i++)
        {
            float freq = 1f / MathF.Pow(theta, (float)(2 * i) / headDim);
            float wavelen = (float)(2 * Math.PI) / freq;
            if (wavelen < highWavelen) result[i] = 1f;
            else if (wavelen > lowWavelen) result[i] = s.Factor;
            else
            {
                float smooth = (s.OriginalContext / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                result[i] = 1f / ((1 - smooth) / s.Factor + smooth);
            }
        }
        return result;
    }

    private sealed class Buffers
    {
        public byte[] Src = [];
        public float[] F = [];
        public float[] P = [];
        public byte[] Dst = [];
    }

    private static void WriteTensor(HuggingFaceSource src, PlannedTensor p, GgufWriter w, Buffers b, Action<long> written, CancellationToken ct)
    {
        long elements = p.Elements;
        int rowLen = (int)p.Shape[0];
        if (p.Data != null)
        {
            var bytes = new byte[GgmlTypes.RowBytes(p.Type, p.Data.Length)];
            Quantize.Row(p.Type, p.Data, bytes);
            w.WriteTensorData(bytes);
            written(bytes.Length);
            return;
        }
        var s = p.Source!;
        int esz = GgmlTypes.BlockBytes(s.Type);
        // The unit of a chunk: the whole tensor for 1-D ones (one row), otherwise whole rows — whole heads when permuting.
        int permRowLen = p.Shape.Length == 1 ? 1 : rowLen;
        int headRows = p.PermuteHeads > 0 ? (int)(elements / permRowLen / p.PermuteHeads) : 0;
        long unit = p.Shape.Length == 1 ? elements : (long)rowLen * Math.Max(1, headRows);
        long chunk = Math.Max(unit, ChunkElements / unit * unit);
        for (long e0 = 0; e0 < elements; e0 += chunk)
        {
            ct.ThrowIfCancellationRequested();
            int n = (int)Math.Min(chunk, elements - e0);
            var raw = ReusedArray.AtLeast(ref b.Src, (long)n * esz).AsSpan(0, n * esz);
            src.Read(s, e0 * esz, raw);
            var f = ReusedArray.AtLeast(ref b.F, n);
            Dequantize.Row(s.Type, raw, f.AsSpan(0, n));
            if (p.AddOffset != 0) System.Numerics.Tensors.TensorPrimitives.Add(f.AsSpan(0, n), p.AddOffset, f.AsSpan(0, n));
            if (headRows > 0)
            {
                var perm = ReusedArray.AtLeast(ref b.P, n);
                PermuteForInterleavedRope(f.AsSpan(0, n), perm.AsSpan(0, n), permRowLen, headRows);
                f = perm;
            }
            long outBytes = GgmlTypes.RowBytes(p.Type, n);
            var dst = ReusedArray.AtLeast(ref b.Dst, outBytes);
            QuantizeRows(p.Type, f, n, p.Shape.Length == 1 ? n : rowLen, dst, ct);
            w.WriteTensorData(dst.AsSpan(0, (int)outBytes));
            written(outBytes);
        }
    }

    /// <summary>Quantizes n floats (whole rows of rowLen) into dst, rows split across cores.</summary>
    private static void QuantizeRows(GgmlType type, float[] f, int n, int rowLen, byte[] dst, CancellationToken ct)
    {
        int rows = n / rowLen;
        int parts = Math.Min(rows, Math.Max(1, Environment.ProcessorCount) * 2);
        if (parts <= 1 || n < 1 << 16)
        {
            Quantize.Row(type, f.AsSpan(0, n), dst.AsSpan(0, (int)GgmlTypes.RowBytes(type, n)));
            return;
        }
        long rowBytes = GgmlTypes.RowBytes(type, rowLen);
        Parallel.For(0, parts, new ParallelOptions { CancellationToken = ct }, part =>
        {
            int r0 = (int)((long)rows * part / parts), r1 = (int)((long)rows * (part + 1) / parts);
            Quantize.Row(type, f.AsSpan(r0 * rowLen, (r1 - r0) * rowLen),
                dst.AsSpan((int)(r0 * rowBytes), (int)((r1 - r0) * rowBytes)));
        });
    }

    // ---------------------------------------------------------------- metadata

    /// <summary>The metadata convert_hf_to_gguf writes: general.*, {arch}.* hyper-parameters, tokenizer.*.</summary>
    public static void AddMetadata(GgufWriter w, HuggingFaceSource src, GgmlType type) => AddMetadata(w, src, FileType(type));

    /// <summary>As above, with general.file_type given as llama.cpp's LLAMA_FTYPE number (a quantization mix such as Q4_K_M).</summary>
    public static void AddMetadata(GgufWriter w, HuggingFaceSource src, uint fileType)
    {
        var c = src.Config;
        var family = c.Family;
        var k = family.Keys;
        string arch = family.GgufNameWritten;
        string Key(ConfigKey key) => key.GgufKey(arch);
        w.AddString("general.architecture", arch);
        w.AddString("general.name", new DirectoryInfo(src.Path).Name);
        w.AddUInt32(Key(k.ContextLength), (uint)c.ContextLength);
        w.AddUInt32(Key(k.EmbeddingLength), (uint)c.Dim);
        w.AddUInt32(Key(k.BlockCount), (uint)c.Layers);
        w.AddUInt32(Key(k.FeedForwardLength), (uint)c.FfnDim);
        w.AddUInt32(Key(k.HeadCount), (uint)c.Heads);
        w.AddUInt32(Key(k.HeadCountKv), (uint)c.KvHeads);
        w.AddFloat32(Key(k.NormEpsilon), c.RmsEps);
        w.AddFloat32(Key(k.RopeFreqBase), c.RopeTheta);
        if (c.HeadDim != c.Dim / c.Heads)
        {
            // Needed whenever head_dim is not hidden_size / heads (Qwen3, some Mistrals).
            w.AddUInt32(Key(k.KeyLength), (uint)c.HeadDim);
            w.AddUInt32(Key(k.ValueLength), (uint)c.HeadDim);
        }
        w.AddUInt32(Key(k.RopeDimensionCount), (uint)c.RopeDims);
        if (c.RopeLinearFactor != 1f)
        {
            w.AddString(Key(k.RopeScalingType), "linear");
            w.AddFloat32(Key(k.RopeScalingFactor), c.RopeLinearFactor);
        }
        w.AddUInt32(Key(k.VocabSize), (uint)c.Vocab);
        if (c.IsMoe)
        {
            w.AddUInt32(Key(k.ExpertCount), (uint)c.ExpertCount);
            w.AddUInt32(Key(k.ExpertsUsed), (uint)c.ExpertsUsed);
            if (c.ExpertFfnDim != c.FfnDim || family.Tensors.Any(t => t.Presence == TensorPresence.WithSharedExpert))
                w.AddUInt32(Key(k.ExpertFeedForwardLength), (uint)c.ExpertFfnDim);
            if (c.SharedExpertFfnDim > 0) w.AddUInt32(Key(k.SharedExpertFeedForwardLength), (uint)c.SharedExpertFfnDim);
            // llama.cpp decides renormalization per architecture; say it only where this model differs from that.
            if (c.ExpertWeightsNorm != family.DefaultExpertWeightsNorm) w.AddBool(Key(k.ExpertWeightsNorm), c.ExpertWeightsNorm);
        }
        if (family.GemmaAttention)
        {
            if (c.AttentionSoftcap > 0) w.AddFloat32(Key(k.AttentionSoftcap), c.AttentionSoftcap);
            if (c.FinalSoftcap > 0) w.AddFloat32(Key(k.FinalSoftcap), c.FinalSoftcap);
            if (c.SlidingWindow > 0)
            {
                w.AddUInt32(Key(k.SlidingWindow), (uint)c.SlidingWindow);
                // Which layers slide, as a period, where the model's is not the family's: llama.cpp's Gemma 3 loader reads
                // this key as a number (a per-layer bool array there was misread: tiny-gemma3's perplexity came out 4.6%
                // off, 11468 against 12002; with the period both give 12001.7). The sliding layers' RoPE base likewise.
                if (c.SlidingPeriod != family.GgufSlidingPeriod)
                    w.AddUInt32(Key(k.SlidingWindowPattern), (uint)c.SlidingPeriod);
                float slidingTheta = c.RopeThetaSliding > 0 ? c.RopeThetaSliding : c.RopeTheta;
                if (family.GgufRopeThetaSliding > 0 ? slidingTheta != family.GgufRopeThetaSliding : c.RopeThetaSliding > 0)
                    w.AddFloat32(Key(k.RopeFreqBaseSliding), slidingTheta);
            }
        }
        // llama.cpp's llama architecture has no ReLU/GELU variant; FitLM's GgufSource reads this key.
        if (c.Activation != family.DefaultActivation) w.AddString(k.GgufActivation, c.Activation.ToString().ToLowerInvariant());
        AddTokenizer(w, src);
        w.AddUInt32("general.quantization_version", QuantizationVersion);
        w.AddUInt32("general.file_type", fileType);
    }

    private static void AddTokenizer(GgufWriter w, HuggingFaceSource src)
    {
        var tok = src.Tokenizer;
        int vocab = src.Config.Vocab;
        bool spm = tok.Kind == TokenizerKind.Spm;
        w.AddString("tokenizer.ggml.model", spm ? "llama" : "gpt2");
        w.AddString("tokenizer.ggml.pre", string.IsNullOrEmpty(tok.PreTokenizer) ? "default" : tok.PreTokenizer);

        var tokens = (tok.Tokens ?? []).ToArray();
        var types = (tok.TokenTypes ?? []).ToArray();
        var scores = tok.Scores?.ToArray();
        if (tokens.Length > vocab)
            throw new FitLMException($"{src.Path}: the tokenizer has {tokens.Length} tokens but the model's vocab_size is {vocab}");
        // As get_vocab_base / _create_vocab_sentencepiece: ids the tokenizer lacks become "[PAD{i}]", type UNUSED.
        var allTokens = new string[vocab];
        var allTypes = new int[vocab];
        var allScores = new float[vocab];
        for (int i = 0; i < vocab; i++)
        {
            bool have = i < tokens.Length;
            allTokens[i] = have ? tokens[i] : $"[PAD{i}]";
            allTypes[i] = have ? (i < types.Length ? types[i] : 1) : 5; // NORMAL / UNUSED
            allScores[i] = have ? (scores != null && i < scores.Length ? scores[i] : 0f) : -10000f;
        }
        w.AddArray("tokenizer.ggml.tokens", allTokens);
        if (spm) w.AddArray("tokenizer.ggml.scores", allScores);
        w.AddArray("tokenizer.ggml.token_type", allTypes);
        if (!spm) w.AddArray("tokenizer.ggml.merges", (tok.Merges ?? []).ToArray());

        // gguf-py's SpecialVocab order: bos, eos, unk, (sep), pad; then add_bos/add_eos; then the chat template.
        void Id(string key, int? id)
        {
            if (id is int v && v >= 0 && v < vocab) w.AddUInt32(key, (uint)v);
        }
        Id("tokenizer.ggml.bos_token_id", tok.BosId);
        Id("tokenizer.ggml.eos_token_id", tok.EosId);
        Id("tokenizer.ggml.unknown_token_id", tok.UnknownId);
        Id("tokenizer.ggml.seperator_token_id", tok.SeparatorId); // sic: GGUF's spelling
        Id("tokenizer.ggml.padding_token_id", tok.PadId);
        Id("tokenizer.ggml.mask_token_id", tok.MaskId);

        // gguf-py writes add_bos/add_eos where tokenizer_config.json says, else where tokenizer.json's
        // post-processor is a template (then both, from the template). The tokenizer resolved both the same way.
        var config = ReadTokenizerConfig(src.Path);
        bool? Flag(string key) =>
            config is { } cfg && cfg.TryGetProperty(key, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : null;
        bool template = HasTemplatePostProcessor(src.Path);
        bool? addBos = Flag("add_bos_token") ?? (template || tok.AddBos ? tok.AddBos : null);
        bool? addEos = Flag("add_eos_token") ?? (template || tok.AddEos ? tok.AddEos : null);
        if (addBos is bool ab) w.AddBool("tokenizer.ggml.add_bos_token", ab);
        if (addEos is bool ae) w.AddBool("tokenizer.ggml.add_eos_token", ae);
        // llama.cpp assumes a space prefix for SPM vocabularies; say so only when this one has none.
        if (spm && !tok.AddSpacePrefix) w.AddBool("tokenizer.ggml.add_space_prefix", false);
        AddChatTemplates(w, src.Path, config);
    }

    /// <summary>Whether tokenizer.json's post_processor is (or holds) a TemplateProcessing.</summary>
    private static bool HasTemplatePostProcessor(string folder)
    {
        string p = Path.Combine(folder, "tokenizer.json");
        if (!File.Exists(p)) return false;
        var root = HuggingFaceSource.ReadJson(p);
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("post_processor", out var pp)) return false;
        static bool Has(JsonElement e) =>
            e.ValueKind == JsonValueKind.Object &&
            ((e.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String && t.GetString() == "TemplateProcessing") ||
             (e.TryGetProperty("processors", out var list) && list.ValueKind == JsonValueKind.Array && list.EnumerateArray().Any(Has)));
        return Has(pp);
    }

    private static JsonElement? ReadTokenizerConfig(string folder)
    {
        string p = Path.Combine(folder, "tokenizer_config.json");
        if (!File.Exists(p)) return null;
        var e = HuggingFaceSource.ReadJson(p);
        return e.ValueKind == JsonValueKind.Object ? e : null;
    }

    /// <summary>tokenizer.chat_template (and tokenizer.chat_template.NAME for named templates), as gguf-py's SpecialVocab.</summary>
    private static void AddChatTemplates(GgufWriter w, string folder, JsonElement? config)
    {
        JsonElement ct = default;
        if (config is { } cfg && cfg.TryGetProperty("chat_template", out var c1)) ct = c1;
        else
        {
            string jinja = Path.Combine(folder, "chat_template.jinja");
            string json = Path.Combine(folder, "chat_template.json");
            if (File.Exists(jinja))
            {
                w.AddString("tokenizer.chat_template", File.ReadAllText(jinja));
                return;
            }
            if (File.Exists(json) && HuggingFaceSource.ReadJson(json) is { ValueKind: JsonValueKind.Object } j &&
                j.TryGetProperty("chat_template", out var c2)) ct = c2;
        }
        if (ct.ValueKind == JsonValueKind.String) w.AddString("tokenizer.chat_template", ct.GetString()!);
        else if (ct.ValueKind == JsonValueKind.Array)
        {
            var names = new List<string>();
            foreach (var e in ct.EnumerateArray())
            {
                if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty("name", out var n) || n.ValueKind != JsonValueKind.String ||
                    !e.TryGetProperty("template", out var t) || t.ValueKind != JsonValueKind.String) continue;
                string name = n.GetString()!;
                if (name == "default") w.AddString("tokenizer.chat_template", t.GetString()!);
                else
                {
                    string clean = new(name.Select(ch => char.IsAsciiLetterOrDigit(ch) ? ch : '_').ToArray());
                    if (names.Contains(clean)) continue;
                    names.Add(clean);
                    w.AddString($"tokenizer.chat_template.{clean}", t.GetString()!);
                }
            }
            if (names.Count > 0) w.AddArray("tokenizer.chat_templates", names.ToArray());
        }
    }
}
