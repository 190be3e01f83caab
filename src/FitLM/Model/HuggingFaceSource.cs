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
        var (_, file, info) = _byName[tensor.Name];
        file.ReadTensorBytes(info, offset, dst);
    }

    public TensorLocation Locate(TensorDesc tensor)
    {
        var (_, file, info) = _byName[tensor.Name];
        return new(file.Path, file.DataOffset + info.Begin);
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
                    string? name = family.GgufTensorName(t.Name);
                    if (name == null) continue; // e.g. rotary_emb.inv_freq: not needed
                    var shape = t.Shape.Reverse().ToArray();
                    if (shape.Length == 0) shape = [1];
                    var desc = new TensorDesc(name, shape, t.Type, t.ByteSize);
                    if (!_byName.TryAdd(name, (desc, f, t)))
                        throw new FitLMException($"{p}: tensor '{t.Name}' appears twice");
                }
            }
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

        // transformers 5 keeps RoPE settings in rope_parameters; older configs use rope_theta + rope_scaling.
        var rope = c.TryGetProperty("rope_parameters", out var rp) && rp.ValueKind == JsonValueKind.Object ? rp
            : c.TryGetProperty("rope_scaling", out var rs) && rs.ValueKind == JsonValueKind.Object ? rs : default;
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
        string? act = GetString(c, k.HfActivation);
        bool Has(TensorOption option, string flag) =>
            option == TensorOption.Always || option == TensorOption.FromModel && GetBool(c, flag, false);
        var cfg = new ModelConfig
        {
            Architecture = family.Name,
            Dim = dim,
            Layers = Int(k.BlockCount),
            Heads = heads,
            KvHeads = kvHeads,
            HeadDim = headDim,
            FfnDim = Int(k.FeedForwardLength),
            Vocab = Int(k.VocabSize),
            RmsEps = (float)(GetNumber(c, k.NormEpsilon.Hf!) ?? family.HfDefaultNormEpsilon),
            RopeTheta = (float)theta,
            RopeDims = headDim,
            RopeStyle = family.HfRopeStyle,
            RopeLinearFactor = linear,
            RopeLlama3 = llama3,
            Activation = act == null ? family.DefaultActivation : ParseActivation(act, path),
            QkvBias = Has(family.QkvBias, k.HfAttentionBias),
            // No config.json flag for Q/K norms: a family has them or not.
            QkNorm = family.QkNorm == TensorOption.Always,
            ContextLength = Int(k.ContextLength, 2048),
        };
        cfg.Validate(path);
        return cfg;
    }
}
