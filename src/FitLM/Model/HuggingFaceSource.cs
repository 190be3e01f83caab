using System.Text.Json;
using System.Text.RegularExpressions;
using FitLM.Formats;
using FitLM.Tokenization;

namespace FitLM.Model;

/// <summary>
/// A Hugging Face model folder: config.json, safetensors (single file or sharded through
/// model.safetensors.index.json) and tokenizer.json. Tensors are exposed under llama.cpp's GGUF names,
/// with shapes in ggml order; the bytes are the safetensors bytes unchanged (row-major [out, in] is
/// ggml's [in, out]). Q/K stay in HF's rotate-half layout, so the config says RopeStyle.Neox.
/// </summary>
public sealed partial class HuggingFaceSource : IModelSource
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
        LoadTensors(folder);
        var list = _byName.Values.Select(v => v.desc).ToList();
        Tensors = list;
        if (Find("output.weight") == null && !GetBool(RawConfig, "tie_word_embeddings", false))
            throw new FitLMException($"{folder}: lm_head.weight is missing and tie_word_embeddings is false");
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

    private void LoadTensors(string folder)
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
                    string? name = MapName(t.Name);
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

    [GeneratedRegex(@"^model\.layers\.(\d+)\.(.+)$")]
    private static partial Regex LayerName();

    /// <summary>Hugging Face tensor name → llama.cpp GGUF tensor name (null for tensors the engine ignores).</summary>
    public static string? MapName(string hf)
    {
        switch (hf)
        {
            case "model.embed_tokens.weight": return "token_embd.weight";
            case "model.norm.weight": return "output_norm.weight";
            case "lm_head.weight": return "output.weight";
        }
        var m = LayerName().Match(hf);
        if (!m.Success) return null;
        string rest = m.Groups[2].Value switch
        {
            "input_layernorm.weight" => "attn_norm.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "self_attn.q_proj.bias" => "attn_q.bias",
            "self_attn.k_proj.bias" => "attn_k.bias",
            "self_attn.v_proj.bias" => "attn_v.bias",
            "self_attn.q_norm.weight" => "attn_q_norm.weight",
            "self_attn.k_norm.weight" => "attn_k_norm.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            _ => "",
        };
        return rest.Length == 0 ? null : $"blk.{m.Groups[1].Value}.{rest}";
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

    private static ModelConfig ParseConfig(JsonElement c, string path)
    {
        if (c.ValueKind != JsonValueKind.Object) throw new FitLMException($"{path}: not a JSON object");
        string modelType = c.TryGetProperty("model_type", out var mt) && mt.ValueKind == JsonValueKind.String ? mt.GetString()! : "";
        string arch = modelType switch
        {
            "llama" => "llama",
            "mistral" => "mistral",
            "qwen2" => "qwen2",
            "qwen3" => "qwen3",
            _ => throw new FitLMException($"{path}: unsupported architecture '{modelType}' (supported: llama, mistral, qwen2, qwen3)"),
        };
        int dim = GetInt(c, "hidden_size", path);
        int heads = GetInt(c, "num_attention_heads", path);
        int kvHeads = GetInt(c, "num_key_value_heads", path, heads);
        int headDim = c.TryGetProperty("head_dim", out var hd) && hd.ValueKind == JsonValueKind.Number
            ? GetInt(c, "head_dim", path) : (heads > 0 ? dim / heads : 0);

        // transformers 5 keeps RoPE settings in rope_parameters; older configs use rope_theta + rope_scaling.
        var rope = c.TryGetProperty("rope_parameters", out var rp) && rp.ValueKind == JsonValueKind.Object ? rp
            : c.TryGetProperty("rope_scaling", out var rs) && rs.ValueKind == JsonValueKind.Object ? rs : default;
        double theta = GetNumber(c, "rope_theta") ?? (rope.ValueKind == JsonValueKind.Object ? GetNumber(rope, "rope_theta") : null) ?? 10000.0;
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
        string act = c.TryGetProperty("hidden_act", out var ha) && ha.ValueKind == JsonValueKind.String ? ha.GetString()! : "silu";
        var cfg = new ModelConfig
        {
            Architecture = arch,
            Dim = dim,
            Layers = GetInt(c, "num_hidden_layers", path),
            Heads = heads,
            KvHeads = kvHeads,
            HeadDim = headDim,
            FfnDim = GetInt(c, "intermediate_size", path),
            Vocab = GetInt(c, "vocab_size", path),
            RmsEps = (float)(GetNumber(c, "rms_norm_eps") ?? 1e-6),
            RopeTheta = (float)theta,
            RopeDims = headDim,
            RopeStyle = RopeStyle.Neox,
            RopeLinearFactor = linear,
            RopeLlama3 = llama3,
            Activation = ParseActivation(act, path),
            QkvBias = arch == "qwen2" || GetBool(c, "attention_bias", false),
            QkNorm = arch == "qwen3",
            ContextLength = GetInt(c, "max_position_embeddings", path, 2048),
        };
        cfg.Validate(path);
        return cfg;
    }
}
