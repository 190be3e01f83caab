using FitLM.Formats;
using FitLM.Tokenization;

namespace FitLM.Model;

/// <summary>A model in a GGUF file as llama.cpp writes it.</summary>
public sealed class GgufSource : IModelSource
{
    public GgufFile File { get; }
    public string Path => File.Path;
    public ModelConfig Config { get; }
    public Tokenizer Tokenizer { get; }
    public IReadOnlyList<TensorDesc> Tensors { get; }
    private readonly Dictionary<string, (TensorDesc desc, GgufTensorInfo info)> _byName = new();

    private GgufSource(GgufFile file)
    {
        File = file;
        var list = new List<TensorDesc>();
        foreach (var t in file.Tensors)
        {
            var d = new TensorDesc(t.Name, t.Shape, t.Type, t.ByteSize);
            list.Add(d);
            _byName[t.Name] = (d, t);
        }
        Tensors = list;
        Config = ReadConfig(file, this);
        Tokenizer = Tokenizer.FromGguf(file);
        // A BitStack stacked file stores its linear weights as blocks; StackLayout.Read checks those instead.
        if (!Compression.StackLayout.IsStacked(file)) ModelValidation.CheckTensors(this);
    }

    public static GgufSource Open(string path)
    {
        var file = GgufFile.Open(path);
        try { return new GgufSource(file); }
        catch { file.Dispose(); throw; }
    }

    public TensorDesc? Find(string name) => _byName.TryGetValue(name, out var x) ? x.desc : null;

    public void Read(TensorDesc tensor, long offset, Span<byte> dst) => File.ReadTensorBytes(_byName[tensor.Name].info, offset, dst);

    public TensorLocation Locate(TensorDesc tensor) => new(File.Path, File.DataOffset + _byName[tensor.Name].info.Offset);

    public void Dispose() => File.Dispose();

    private static ModelConfig ReadConfig(GgufFile f, GgufSource src)
    {
        string arch = f.Find("general.architecture")?.AsString()
            ?? throw new FitLMException($"{f.Path}: metadata 'general.architecture' is missing");
        if (Array.IndexOf(ModelConfig.SupportedArchitectures, arch) < 0)
            throw new FitLMException($"{f.Path}: unsupported architecture '{arch}' (supported: {string.Join(", ", ModelConfig.SupportedArchitectures)})");
        int Int(string key) => ModelValidation.ToInt(f.GetInt($"{arch}.{key}"), key, f.Path);
        int dim = Int("embedding_length");
        int heads = Int("attention.head_count");
        int kvHeads = ModelValidation.ToInt(f.GetInt($"{arch}.attention.head_count_kv", heads), "head_count_kv", f.Path);
        int headDim = ModelValidation.ToInt(f.GetInt($"{arch}.attention.key_length", heads > 0 ? dim / heads : 0), "key_length", f.Path);
        var embd = src.Find("token_embd.weight") ?? throw new FitLMException($"{f.Path}: tensor 'token_embd.weight' is missing");
        int vocab = ModelValidation.ToInt(f.GetInt($"{arch}.vocab_size", embd.Shape.Length > 1 ? embd.Shape[1] : 0), "vocab_size", f.Path);
        Llama3RopeScaling? llama3 = null;
        float linear = 1f;
        string scalingType = f.Find($"{arch}.rope.scaling.type")?.AsString() ?? "none";
        if (scalingType == "linear") linear = (float)f.GetDouble($"{arch}.rope.scaling.factor", 1.0);
        // Llama 3.1 style scaling arrives in GGUF as a rope_freqs.weight tensor of per-frequency divisors.
        var actName = f.Find("fitlm.ffn_activation")?.AsString() ?? "silu";
        var cfg = new ModelConfig
        {
            Architecture = arch,
            Dim = dim,
            Layers = Int("block_count"),
            Heads = heads,
            KvHeads = kvHeads,
            HeadDim = headDim,
            FfnDim = Int("feed_forward_length"),
            Vocab = vocab,
            RmsEps = (float)f.GetDouble($"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
            RopeTheta = (float)f.GetDouble($"{arch}.rope.freq_base", 10000.0),
            RopeDims = ModelValidation.ToInt(f.GetInt($"{arch}.rope.dimension_count", headDim), "rope.dimension_count", f.Path),
            RopeStyle = arch is "qwen2" or "qwen3" ? RopeStyle.Neox : RopeStyle.Interleaved,
            RopeLinearFactor = linear,
            RopeLlama3 = llama3,
            Activation = HuggingFaceSource.ParseActivation(actName, f.Path),
            QkvBias = src.Find("blk.0.attn_q.bias") != null,
            QkNorm = src.Find("blk.0.attn_q_norm.weight") != null,
            ContextLength = ModelValidation.ToInt(f.GetInt($"{arch}.context_length", 2048), "context_length", f.Path),
        };
        cfg.Validate(f.Path);
        return cfg;
    }
}
