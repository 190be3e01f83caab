using FitLM.Formats;
using FitLM.Model.Architectures;
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
        if (!IsStacked(file)) ModelValidation.CheckTensors(this);
    }

    /// <summary>The metadata key that marks a BitStack stacked file (its layout is read by the stacked weight provider).</summary>
    public const string StackMethodKey = "fitlm.stack.method";

    /// <summary>Whether <paramref name="file"/> is a BitStack stacked file: its linear weights are stored as blocks.</summary>
    public static bool IsStacked(GgufFile file) => file.Find(StackMethodKey) != null;

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
        var family = ArchitectureRegistry.GetGguf(arch, f.Path);
        var k = family.Keys;
        string Key(ConfigKey key) => key.GgufKey(arch);
        int Int(ConfigKey key) => ModelValidation.ToInt(f.GetInt(Key(key)), key.Gguf, f.Path);
        int IntOr(ConfigKey key, long fallback) => ModelValidation.ToInt(f.GetInt(Key(key), fallback), key.Gguf, f.Path);
        int dim = Int(k.EmbeddingLength);
        int heads = Int(k.HeadCount);
        int kvHeads = IntOr(k.HeadCountKv, heads);
        int headDim = IntOr(k.KeyLength, heads > 0 ? dim / heads : 0);
        var embd = src.Find("token_embd.weight") ?? throw new FitLMException($"{f.Path}: tensor 'token_embd.weight' is missing");
        int vocab = IntOr(k.VocabSize, embd.Shape.Length > 1 ? embd.Shape[1] : 0);
        float linear = 1f;
        string scalingType = f.Find(Key(k.RopeScalingType))?.AsString() ?? "none";
        if (scalingType == "linear") linear = (float)f.GetDouble(Key(k.RopeScalingFactor), 1.0);
        // Llama 3.1 style scaling arrives in GGUF as a rope_freqs.weight tensor of per-frequency divisors.
        var actName = f.Find(k.GgufActivation)?.AsString();
        // Optional tensor groups the family leaves to the model: a GGUF file has them or not.
        bool Has(TensorOption option, TensorPresence group) => option == TensorOption.Always ||
            option == TensorOption.FromModel && family.Tensors.Any(t => t.Presence == group && src.Find(t.GgufName(0)) != null);
        int ffn = Int(k.FeedForwardLength);
        int layers = Int(k.BlockCount);
        int experts = IntOr(k.ExpertCount, 0);
        bool moe = experts > 0 && family.Tensors.Any(t => t.Experts);
        // Gemma: the window, which layers slide (a period, or one flag per layer), the sliding layers' RoPE base.
        int window = family.GemmaAttention ? IntOr(k.SlidingWindow, 0) : 0, period = 1;
        if (window > 0)
        {
            var pattern = f.Find(Key(k.SlidingWindowPattern));
            if (pattern == null) period = family.GgufSlidingPeriod;
            else if (pattern.Type == GgufValueType.Array)
            {
                var flags = pattern.AsBoolArray();
                if (flags.Length != layers) throw new FitLMException($"{f.Path}: {Key(k.SlidingWindowPattern)} has {flags.Length} entries for {layers} layers");
                period = HuggingFaceSource.PeriodOf(flags) ?? throw new FitLMException($"{f.Path}: {Key(k.SlidingWindowPattern)} does not repeat one pattern of sliding layers followed by a global one");
                if (!flags.Any(x => x)) window = 0;
            }
            else period = ModelValidation.ToInt(f.GetInt(Key(k.SlidingWindowPattern)), k.SlidingWindowPattern.Gguf, f.Path);
        }
        float theta = (float)f.GetDouble(Key(k.RopeFreqBase), 10000.0);
        float thetaSliding = window > 0 ? (float)f.GetDouble(Key(k.RopeFreqBaseSliding), family.GgufRopeThetaSliding) : 0f;
        if (thetaSliding == theta) thetaSliding = 0;
        var cfg = new ModelConfig
        {
            Architecture = family.Name,
            Dim = dim,
            Layers = layers,
            Heads = heads,
            KvHeads = kvHeads,
            HeadDim = headDim,
            FfnDim = ffn,
            Vocab = vocab,
            RmsEps = (float)f.GetDouble(Key(k.NormEpsilon), family.GgufDefaultNormEpsilon),
            RopeTheta = theta,
            RopeDims = IntOr(k.RopeDimensionCount, headDim),
            RopeStyle = family.GgufRopeStyle,
            RopeLinearFactor = linear,
            Activation = actName == null ? family.DefaultActivation : HuggingFaceSource.ParseActivation(actName, f.Path),
            QkvBias = Has(family.QkvBias, TensorPresence.WithQkvBias),
            QkNorm = Has(family.QkNorm, TensorPresence.WithQkNorm),
            ContextLength = IntOr(k.ContextLength, 2048),
            QkNormWholeRow = family.QkNormWholeRow,
            EmbeddingScale = family.ScalesEmbedding ? MathF.Sqrt(dim) : 1f,
            PostNorms = family.PostNorms,
            AttentionSoftcap = family.GemmaAttention ? (float)f.GetDouble(Key(k.AttentionSoftcap), 0) : 0,
            FinalSoftcap = family.GemmaAttention ? (float)f.GetDouble(Key(k.FinalSoftcap), 0) : 0,
            SlidingWindow = window,
            SlidingPeriod = period,
            RopeThetaSliding = thetaSliding,
            FusedQkv = family.FusedQkv,
            FusedGateUp = family.FusedGateUp,
            ExpertCount = moe ? experts : 0,
            ExpertsUsed = moe ? Int(k.ExpertsUsed) : 0,
            ExpertFfnDim = moe ? IntOr(k.ExpertFeedForwardLength, ffn) : 0,
            SharedExpertFfnDim = moe && src.Find("blk.0.ffn_gate_shexp.weight") != null ? IntOr(k.SharedExpertFeedForwardLength, ffn) : 0,
            ExpertWeightsNorm = moe && f.GetBool(Key(k.ExpertWeightsNorm), family.DefaultExpertWeightsNorm),
        };
        cfg.Validate(f.Path);
        return cfg;
    }
}
