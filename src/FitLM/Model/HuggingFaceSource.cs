using System.Text.Json;
using FitLM.Formats;
using FitLM.Model.Architectures;
using FitLM.Tokenization;

namespace FitLM.Model;

/// <summary>
/// A Hugging Face model folder: config.json, safetensors (single file or sharded through
/// model.safetensors.index.json) and tokenizer.json. Tensors are exposed under llama.cpp's GGUF names,
/// with shapes in ggml order; the bytes are the safetensors bytes unchanged (row-major [out, in] is
/// ggml's [in, out]). Names, keys and options come from the family's <see cref="ArchitectureFamily"/> description;
/// Q/K stay in HF's rotate-half layout (the family's HfRopeStyle, RopeStyle.Neox).
/// </summary>
public sealed class HuggingFaceSource : IModelSource
{
    public string Path { get; }
    public ModelConfig Config { get; }
    public Tokenizer Tokenizer { get; }
    public IReadOnlyList<TensorDesc> Tensors { get; }
    /// <summary>config.json as parsed, for writers that copy values through.</summary>
    public JsonElement RawConfig { get; }

    private readonly List<SafetensorsFile> _files = new();
    /// <summary>Stacks of routed experts, stored one tensor per expert: expert e is bytes [e·PartBytes, (e+1)·PartBytes) of the stack.</summary>
    private readonly Dictionary<string, (SafetensorsFile File, SafetensorsTensorInfo Info)[]> _stacks = new();
    private readonly Dictionary<string, (TensorDesc desc, SafetensorsFile file, SafetensorsTensorInfo info)> _byName = new();

    private HuggingFaceSource(string folder)
    {
        Path = folder;
        string configPath = System.IO.Path.Combine(folder, "config.json");
        if (!File.Exists(configPath)) throw new FitLMException($"{folder}: not a model folder (config.json is missing)");
        RawConfig = ReadJson(configPath);
        Config = ParseConfig(RawConfig, configPath);
        LoadTensors(folder, Config.Family);
        var list = _byName.Values.Select(v => v.desc).ToList();
        Tensors = list;
        var family = Config.Family;
        if (Find("output.weight") == null && !(family.OutputMayBeTied && GetBool(RawConfig, family.Keys.HfTiedEmbeddings, false)))
            throw new FitLMException($"{folder}: lm_head.weight is missing and {family.Keys.HfTiedEmbeddings} is false");
        ModelValidation.CheckTensors(this);
        Tokenizer = Tokenizer.FromHuggingFace(folder);
    }

    public static HuggingFaceSource Open(string folder)
    {
        var src = (HuggingFaceSource?)null;
        try { return src = new HuggingFaceSource(folder); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new FitLMException($"{folder}: {e.Message}", e);
        }
    }

    public TensorDesc? Find(string name) => _byName.TryGetValue(name, out var x) ? x.desc : null;

    public void Read(TensorDesc tensor, long offset, Span<byte> dst)
    {
        if (_stacks.TryGetValue(tensor.Name, out var parts))
        {
            // A stack of experts spans several stored tensors: read each part's share.
            long partBytes = parts[0].Info.ByteSize;
            while (dst.Length > 0)
            {
                int e = (int)(offset / partBytes);
                if ((uint)e >= (uint)parts.Length) throw new FitLMException($"{Path}: read past the end of '{tensor.Name}'");
                long within = offset - e * partBytes;
                int n = (int)Math.Min(dst.Length, partBytes - within);
                parts[e].File.ReadTensorBytes(parts[e].Info, within, dst[..n]);
                dst = dst[n..];
                offset += n;
            }
            return;
        }
        var (_, file, info) = _byName[tensor.Name];
        file.ReadTensorBytes(info, offset, dst);
    }

    public TensorLocation Locate(TensorDesc tensor)
    {
        if (_stacks.ContainsKey(tensor.Name))
            throw new FitLMException($"{Path}: '{tensor.Name}' is stored one tensor per expert; convert the folder to GGUF (fitlm convert) to stream its experts");
        var (_, file, info) = _byName[tensor.Name];
        return new(file.Path, file.DataOffset + info.Begin);
    }

    /// <summary>
    /// One GGUF-style tensor [.., .., experts] from the per-expert tensors of a Hugging Face folder: every expert
    /// 0..E-1 present, all of one type and shape.
    /// </summary>
    private void StackExperts(string name, Dictionary<int, (SafetensorsFile File, SafetensorsTensorInfo Info)> parts)
    {
        int count = parts.Count;
        var ordered = new (SafetensorsFile File, SafetensorsTensorInfo Info)[count];
        for (int e = 0; e < count; e++)
            ordered[e] = parts.TryGetValue(e, out var part) ? part
                : throw new FitLMException($"{Path}: expert {e} of '{name}' is missing ({count} experts stored, numbered up to {parts.Keys.Max()})");
        var first = ordered[0].Info;
        foreach (var (_, info) in ordered)
            if (info.Type != first.Type || !info.Shape.SequenceEqual(first.Shape))
                throw new FitLMException($"{Path}: '{info.Name}' has type {info.Type} and shape [{string.Join(", ", info.Shape)}], unlike expert 0's {first.Type} [{string.Join(", ", first.Shape)}]");
        if (first.Shape.Length != 2) throw new FitLMException($"{Path}: expert tensor '{first.Name}' is not a matrix");
        long[] shape = [first.Shape[1], first.Shape[0], count];
        _byName[name] = (new TensorDesc(name, shape, first.Type, first.ByteSize * count), ordered[0].File, first);
        _stacks[name] = ordered;
    }

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
    }

    private void LoadTensors(string folder, ArchitectureFamily family)
    {
        string index = System.IO.Path.Combine(folder, "model.safetensors.index.json");
        string single = System.IO.Path.Combine(folder, "model.safetensors");
        var shards = new List<string>();
        var experts = new Dictionary<string, Dictionary<int, (SafetensorsFile, SafetensorsTensorInfo)>>();
        if (File.Exists(index))
        {
            var root = ReadJson(index);
            if (!root.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new FitLMException($"{index}: 'weight_map' is missing");
            foreach (var p in map.EnumerateObject())
            {
                string shard = p.Value.GetString() ?? "";
                if (shard.Length == 0 || shard.Contains('/') || shard.Contains('\\') || shard.Contains(".."))
                    throw new FitLMException($"{index}: invalid shard name '{shard}'");
                if (!shards.Contains(shard)) shards.Add(shard);
            }
        }
        else if (File.Exists(single)) shards.Add("model.safetensors");
        else throw new FitLMException($"{folder}: no model.safetensors or model.safetensors.index.json");

        try
        {
            foreach (var shard in shards)
            {
                string p = System.IO.Path.Combine(folder, shard);
                if (!File.Exists(p)) throw new FitLMException($"{p}: shard named in the index is missing");
                var f = SafetensorsFile.Open(p);
                _files.Add(f);
                foreach (var t in f.Tensors.Values)
                {
                    if (family.MapHfTensor(t.Name) is not var (name, expert, _)) continue; // e.g. rotary_emb.inv_freq: not needed
                    if (expert >= 0)
                    {
                        if (!experts.TryGetValue(name, out var parts)) experts[name] = parts = [];
                        if (!parts.TryAdd(expert, (f, t))) throw new FitLMException($"{p}: tensor '{t.Name}' appears twice");
                        continue;
                    }
                    var shape = t.Shape.Reverse().ToArray();
                    if (shape.Length == 0) shape = [1];
                    var desc = new TensorDesc(name, shape, t.Type, t.ByteSize);
                    if (!_byName.TryAdd(name, (desc, f, t)))
                        throw new FitLMException($"{p}: tensor '{t.Name}' appears twice");
                }
            }
            foreach (var (name, parts) in experts) StackExperts(name, parts);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    internal static JsonElement ReadJson(string path)
    {
        try
        {
            var info = new FileInfo(path);
            if (info.Length > 64L << 20) throw new FitLMException($"{path}: file is too large for a JSON config ({info.Length} bytes)");
            var bytes = File.ReadAllBytes(path);
            if (!System.Text.Unicode.Utf8.IsValid(bytes)) throw new FitLMException($"{path}: not valid UTF-8 (corrupt file?)");
            using var doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 64 });
            return doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new FitLMException($"{path}: invalid JSON: {e.Message}", e);
        }
    }

    private static bool GetBool(JsonElement o, string key, bool fallback) =>
        o.TryGetProperty(key, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : fallback;

    private static double? GetNumber(JsonElement o, string key) =>
        o.ValueKind == JsonValueKind.Object && o.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : null;

    private static int GetInt(JsonElement o, string key, string path, int? fallback = null)
    {
        var d = GetNumber(o, key);
        if (d == null) return fallback ?? throw new FitLMException($"{path}: '{key}' is missing");
        if (d < 0 || d > int.MaxValue || d != Math.Floor(d.Value)) throw new FitLMException($"{path}: '{key}' = {d} is out of range");
        return (int)d.Value;
    }

    public static FfnActivation ParseActivation(string name, string path) => name switch
    {
        "silu" or "swish" => FfnActivation.Silu,
        "relu" => FfnActivation.Relu,
        "gelu" or "gelu_pytorch_tanh" or "gelu_new" => FfnActivation.Gelu,
        _ => throw new FitLMException($"{path}: unsupported FFN activation '{name}'"),
    };

    /// <summary>
    /// The sliding-window period of a Gemma config: from layer_types ("sliding_attention"/"full_attention" per
    /// layer) when it has them, else sliding_window_pattern, else the family's. Layer l slides when
    /// l % period &lt; period - 1; layer types that follow no such period are refused. No sliding layer at all
    /// turns the window off.
    /// </summary>
    private static int SlidingPeriod(JsonElement c, ConfigKeys k, ArchitectureFamily family, string path, int layers, ref int window)
    {
        if (!c.TryGetProperty(k.HfLayerTypes, out var types) || types.ValueKind != JsonValueKind.Array)
            return GetInt(c, k.SlidingWindowPattern.Hf!, path, GetInt(c, "_" + k.SlidingWindowPattern.Hf!, path, family.GgufSlidingPeriod));
        var sliding = types.EnumerateArray().Select(t => t.ValueKind == JsonValueKind.String && t.GetString() == "sliding_attention").ToArray();
        if (sliding.Length != layers) throw new FitLMException($"{path}: '{k.HfLayerTypes}' has {sliding.Length} entries for {layers} layers");
        if (!sliding.Any(x => x))
        {
            window = 0;
            return 1;
        }
        return PeriodOf(sliding) ?? throw new FitLMException($"{path}: '{k.HfLayerTypes}' does not repeat one pattern of sliding layers followed by a global one");
    }

    /// <summary>The sliding-window period of per-layer flags (true: the layer slides), as <see cref="SlidingPeriod"/> reads layer_types; null when they follow no period.</summary>
    public static int? PeriodOf(IReadOnlyList<bool> sliding)
    {
        int layers = sliding.Count;
        for (int p = 1; p <= layers + 1; p++)
            if (Enumerable.Range(0, layers).All(l => sliding[l] == KvCache.KvShape.Slides(l, 1, p))) return p;
        return null;
    }

    private static string? GetString(JsonElement o, string key) =>
        o.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    /// <summary>The family config.json names: by its "architectures" list, else its "model_type".</summary>
    private static ArchitectureFamily FamilyOf(JsonElement c, string path)
    {
        var architectures = c.TryGetProperty("architectures", out var a) && a.ValueKind == JsonValueKind.Array
            ? a.EnumerateArray().Where(e => e.ValueKind == JsonValueKind.String).Select(e => e.GetString()!).ToList()
            : [];
        return ArchitectureRegistry.GetHuggingFace(architectures, GetString(c, "model_type"), path);
    }

    private static ModelConfig ParseConfig(JsonElement c, string path)
    {
        if (c.ValueKind != JsonValueKind.Object) throw new FitLMException($"{path}: not a JSON object");
        var family = FamilyOf(c, path);
        var k = family.Keys;
        int Int(ConfigKey key, int? fallback = null) => GetInt(c, key.Hf!, path, fallback);
        int dim = Int(k.EmbeddingLength);
        int heads = Int(k.HeadCount);
        int kvHeads = Int(k.HeadCountKv, heads);
        int headDim = Int(k.KeyLength, heads > 0 ? dim / heads : 0);

        // transformers 5 keeps RoPE settings in rope_parameters (Gemma 3: one set per layer type); older configs
        // use rope_theta + rope_scaling.
        var rope = c.TryGetProperty("rope_parameters", out var rp) && rp.ValueKind == JsonValueKind.Object ? rp
            : c.TryGetProperty("rope_scaling", out var rs) && rs.ValueKind == JsonValueKind.Object ? rs : default;
        JsonElement ropeSliding = default;
        if (rope.ValueKind == JsonValueKind.Object && rope.TryGetProperty("full_attention", out var full) && full.ValueKind == JsonValueKind.Object)
        {
            if (rope.TryGetProperty("sliding_attention", out var sl) && sl.ValueKind == JsonValueKind.Object) ropeSliding = sl;
            rope = full;
        }
        string thetaKey = k.RopeFreqBase.Hf!;
        double theta = GetNumber(c, thetaKey) ?? (rope.ValueKind == JsonValueKind.Object ? GetNumber(rope, thetaKey) : null) ?? 10000.0;
        string ropeType = rope.ValueKind == JsonValueKind.Object && (rope.TryGetProperty("rope_type", out var rt) || rope.TryGetProperty("type", out rt))
            && rt.ValueKind == JsonValueKind.String ? rt.GetString()! : "default";
        Llama3RopeScaling? llama3 = null;
        float linear = 1f;
        switch (ropeType)
        {
            case "default": break;
            case "linear": linear = (float)(GetNumber(rope, "factor") ?? 1.0); break;
            case "llama3":
                llama3 = new Llama3RopeScaling(
                    (float)(GetNumber(rope, "factor") ?? 8.0),
                    (float)(GetNumber(rope, "low_freq_factor") ?? 1.0),
                    (float)(GetNumber(rope, "high_freq_factor") ?? 4.0),
                    GetInt(rope, "original_max_position_embeddings", path, 8192));
                break;
            default: throw new FitLMException($"{path}: unsupported RoPE scaling '{ropeType}'");
        }
        double partial = GetNumber(c, "partial_rotary_factor") ?? (rope.ValueKind == JsonValueKind.Object ? GetNumber(rope, "partial_rotary_factor") : null) ?? 1.0;
        int ropeDims = (int)(headDim * partial) & ~1;
        string? act = GetString(c, k.HfActivation);
        bool Has(TensorOption option, string flag) =>
            option == TensorOption.Always || option == TensorOption.FromModel && GetBool(c, flag, false);

        // Mixture of experts.
        int experts = GetInt(c, k.ExpertCount.Hf!, path, GetInt(c, k.HfExpertCountAlternative, path, 0));
        bool moe = experts > 0 && family.Tensors.Any(t => t.Experts);
        if (moe)
        {
            if (GetNumber(c, "decoder_sparse_step") is double step && step != 1 ||
                c.TryGetProperty("mlp_only_layers", out var dense) && dense.ValueKind == JsonValueKind.Array && dense.GetArrayLength() > 0)
                throw new FitLMException($"{path}: dense layers between mixture-of-experts layers (decoder_sparse_step, mlp_only_layers) are not supported");
        }
        int ffn = Int(k.FeedForwardLength);

        // Gemma: sliding-window layers from layer_types (transformers 5) or the pattern, soft-capping, the query scale.
        int window = 0, period = 1;
        float thetaSliding = 0, attnCap = 0, finalCap = 0, attnScale = 0;
        if (family.GemmaAttention)
        {
            window = GetInt(c, k.SlidingWindow.Hf!, path, 0);
            period = SlidingPeriod(c, k, family, path, Int(k.BlockCount), ref window);
            double? slidingTheta = ropeSliding.ValueKind == JsonValueKind.Object ? GetNumber(ropeSliding, thetaKey) : GetNumber(c, k.RopeFreqBaseSliding.Hf!);
            if (slidingTheta is double st && st != theta) thetaSliding = (float)st;
            attnCap = (float)(GetNumber(c, k.AttentionSoftcap.Hf!) ?? 0);
            finalCap = (float)(GetNumber(c, k.FinalSoftcap.Hf!) ?? 0);
            // llama.cpp scales by 1/√head_dim; a model whose query_pre_attn_scalar differs says so here.
            if (GetNumber(c, k.HfQueryPreAttentionScalar) is double qs && qs > 0 && qs != headDim) attnScale = (float)(1 / Math.Sqrt(qs));
        }
        var cfg = new ModelConfig
        {
            Architecture = family.Name,
            Dim = dim,
            Layers = Int(k.BlockCount),
            Heads = heads,
            KvHeads = kvHeads,
            HeadDim = headDim,
            FfnDim = ffn,
            Vocab = Int(k.VocabSize),
            RmsEps = (float)(GetNumber(c, k.NormEpsilon.Hf!) ?? family.HfDefaultNormEpsilon),
            RopeTheta = (float)theta,
            RopeDims = ropeDims,
            RopeStyle = family.HfRopeStyle,
            RopeLinearFactor = linear,
            RopeLlama3 = llama3,
            Activation = act == null ? family.DefaultActivation : ParseActivation(act, path),
            QkvBias = Has(family.QkvBias, k.HfAttentionBias),
            // No config.json flag for Q/K norms: a family has them or not.
            QkNorm = family.QkNorm == TensorOption.Always,
            QkNormWholeRow = family.QkNormWholeRow,
            ContextLength = Int(k.ContextLength, 2048),
            EmbeddingScale = family.ScalesEmbedding ? MathF.Sqrt(dim) : 1f,
            NormWeightOffset = family.HfNormOffset,
            PostNorms = family.PostNorms,
            AttentionScale = attnScale,
            AttentionSoftcap = attnCap,
            FinalSoftcap = finalCap,
            SlidingWindow = window,
            SlidingPeriod = period,
            RopeThetaSliding = thetaSliding,
            FusedQkv = family.FusedQkv,
            FusedGateUp = family.FusedGateUp,
            ExpertCount = moe ? experts : 0,
            ExpertsUsed = moe ? GetInt(c, k.ExpertsUsed.Hf!, path) : 0,
            ExpertFfnDim = moe ? GetInt(c, k.ExpertFeedForwardLength.Hf!, path, ffn) : 0,
            SharedExpertFfnDim = moe && family.Tensors.Any(t => t.Presence == TensorPresence.WithSharedExpert)
                ? GetInt(c, k.SharedExpertFeedForwardLength.Hf!, path, 0) : 0,
            ExpertWeightsNorm = moe && GetBool(c, k.ExpertWeightsNorm.Hf!, family.DefaultExpertWeightsNorm),
        };
        cfg.Validate(path);
        return cfg;
    }
}
