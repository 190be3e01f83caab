using FitLM.Model;

namespace FitLM.Adapters;

/// <summary>
/// One low-rank update of a weight matrix W [Out × In]: W' = W + Scale · B · A, with A [Rank × In] and
/// B [Out × Rank], row-major float32 (PEFT's lora_A / lora_B shapes). <see cref="Name"/> is the GGUF name of W
/// ("blk.3.attn_q.weight"). The rows of B are in the order the loaded model uses: for a llama GGUF file that is
/// the converter's Q/K permutation (interleaved RoPE), for a Hugging Face folder the folder's order; the file
/// readers and writers convert.
/// </summary>
public sealed class LoraPair(string name, int rank, int inputs, int outputs)
{
    public string Name { get; } = name;
    public int Rank { get; } = rank;
    public int In { get; } = inputs;
    public int Out { get; } = outputs;
    public float[] A { get; } = new float[(long)rank * inputs];
    public float[] B { get; } = new float[(long)outputs * rank];
}

/// <summary>
/// A LoRA adapter: the pairs of the matrices it adapts and one scale (alpha / rank, PEFT's convention).
/// What fine-tuning trains and saves, what <c>--lora</c> applies and what <c>fitlm export</c> merges.
/// </summary>
public sealed class LoraAdapter
{
    /// <summary>The short target names users give (<c>--targets q,k,v,o,gate,up,down</c>), in this order.</summary>
    public static readonly IReadOnlyList<string> AllTargets = ["q", "k", "v", "o", "gate", "up", "down"];

    public int Rank { get; }
    public float Alpha { get; }
    public float Scale => Alpha / Rank;
    /// <summary>The short names of the adapted projections.</summary>
    public IReadOnlyList<string> Targets { get; }
    /// <summary>The pairs by GGUF matrix name, in layer order then <see cref="AllTargets"/> order.</summary>
    public IReadOnlyList<LoraPair> Pairs { get; }

    private readonly Dictionary<string, LoraPair> _byName;

    public LoraAdapter(int rank, float alpha, IReadOnlyList<string> targets, IReadOnlyList<LoraPair> pairs)
    {
        if (rank <= 0) throw new FitLMException($"LoRA rank must be at least 1 (got {rank})");
        if (!float.IsFinite(alpha) || alpha <= 0) throw new FitLMException($"LoRA alpha must be a positive number (got {alpha})");
        Rank = rank;
        Alpha = alpha;
        Targets = targets;
        Pairs = pairs;
        _byName = pairs.ToDictionary(p => p.Name, StringComparer.Ordinal);
    }

    public LoraPair? Find(string matrixName) => _byName.GetValueOrDefault(matrixName);

    /// <summary>The GGUF tensor suffix of a short target name ("q" → "attn_q.weight").</summary>
    public static string TensorOf(string target) => target switch
    {
        "q" => "attn_q.weight",
        "k" => "attn_k.weight",
        "v" => "attn_v.weight",
        "o" => "attn_output.weight",
        "gate" => "ffn_gate.weight",
        "up" => "ffn_up.weight",
        "down" => "ffn_down.weight",
        _ => throw new FitLMException($"unknown LoRA target '{target}' (use any of {string.Join(",", AllTargets)})"),
    };

    /// <summary>[Out, In] of a target's matrix in a model of this configuration.</summary>
    public static (int Out, int In) ShapeOf(string target, ModelConfig c) => target switch
    {
        "q" => (c.QDim, c.Dim),
        "k" or "v" => (c.KvDim, c.Dim),
        "o" => (c.Dim, c.QDim),
        "gate" or "up" => (c.FfnDim, c.Dim),
        "down" => (c.Dim, c.FfnDim),
        _ => throw new FitLMException($"unknown LoRA target '{target}' (use any of {string.Join(",", AllTargets)})"),
    };

    /// <summary>
    /// A new adapter as PEFT initializes one: A uniform in ±1/√In (kaiming-uniform with a = √5), B zero, so the
    /// adapted model starts equal to the base. Deterministic in <paramref name="seed"/>.
    /// </summary>
    public static LoraAdapter Create(ModelConfig config, IReadOnlyList<string> targets, int rank, float alpha, int seed)
    {
        if (targets.Count == 0) throw new FitLMException("no LoRA targets given (use any of q,k,v,o,gate,up,down)");
        var ordered = AllTargets.Where(targets.Contains).ToArray();
        foreach (var t in targets) TensorOf(t); // refuses unknown names
        if (rank <= 0) throw new FitLMException($"LoRA rank must be at least 1 (got {rank})");
        var rng = new Random(seed);
        var pairs = new List<LoraPair>();
        for (int l = 0; l < config.Layers; l++)
            foreach (var t in ordered)
            {
                var (o, i) = ShapeOf(t, config);
                var p = new LoraPair($"blk.{l}.{TensorOf(t)}", rank, i, o);
                float bound = 1f / MathF.Sqrt(i);
                for (int j = 0; j < p.A.Length; j++) p.A[j] = (float)(rng.NextDouble() * 2 - 1) * bound;
                pairs.Add(p);
            }
        return new LoraAdapter(rank, alpha, ordered, pairs);
    }
}
