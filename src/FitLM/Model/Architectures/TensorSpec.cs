namespace FitLM.Model.Architectures;

/// <summary>When a tensor of an architecture's table is in a model.</summary>
public enum TensorPresence
{
    /// <summary>Always there.</summary>
    Required,
    /// <summary>May be there (output.weight when not tied to token_embd, rope_freqs.weight); checked when it is.</summary>
    Optional,
    /// <summary>There when the configuration has Q/K/V biases (<see cref="ModelConfig.QkvBias"/>).</summary>
    WithQkvBias,
    /// <summary>There when the configuration has per-head Q/K RMS norms (<see cref="ModelConfig.QkNorm"/>).</summary>
    WithQkNorm,
    /// <summary>There in a dense model: the FFN a mixture of experts replaces.</summary>
    Dense,
    /// <summary>There in a mixture of experts (<see cref="ModelConfig.IsMoe"/>): the router and the stacked experts.</summary>
    WithExperts,
    /// <summary>There when the mixture has a shared expert (<see cref="ModelConfig.SharedExpertFfnDim"/> &gt; 0).</summary>
    WithSharedExpert,
}

/// <summary>Which heads split a tensor's rows, for the converter's rotate-half → interleaved RoPE permutation.</summary>
public enum RopeRows { None, QueryHeads, KeyHeads }

/// <summary>
/// One tensor of an architecture: its llama.cpp GGUF name, its Hugging Face name, its shape in ggml order
/// (Shape[0] = row length) for a configuration, and when it exists. Names of per-layer tensors are the part
/// after the layer prefix ("attn_q.weight" is "blk.N.attn_q.weight" in GGUF, "model.layers.N." + Hf in HF).
/// </summary>
/// <param name="Gguf">GGUF name (after "blk.N." for a per-layer tensor).</param>
/// <param name="Hf">Hugging Face name (after the family's layer prefix for a per-layer tensor); null for a tensor the converter computes.</param>
/// <param name="FeedForward">One of the gate/up/down matrices that `fitlm prepare` bundles per neuron.</param>
/// <param name="Experts">A stack of routed experts: one tensor [.., .., ExpertCount] in GGUF, one tensor per expert in
/// Hugging Face files, whose name holds the expert's number where <see cref="ExpertMark"/> stands.</param>
public sealed record TensorSpec(
    string Gguf, string? Hf, bool PerLayer, Func<ModelConfig, long[]> Shape,
    TensorPresence Presence = TensorPresence.Required, RopeRows Rope = RopeRows.None, bool FeedForward = false, bool Experts = false)
{
    /// <summary>Where an expert's number stands in the Hugging Face name of a stacked-expert tensor.</summary>
    public const string ExpertMark = "{e}";

    /// <summary>The GGUF name of this tensor in layer <paramref name="layer"/> (ignored for a global tensor).</summary>
    public string GgufName(int layer) => PerLayer ? $"blk.{layer}.{Gguf}" : Gguf;

    /// <summary>Whether a model of this configuration must have the tensor (optional ones are checked only when present).</summary>
    public bool IsRequired(ModelConfig c) => Presence switch
    {
        TensorPresence.Required => true,
        TensorPresence.WithQkvBias => c.QkvBias,
        TensorPresence.WithQkNorm => c.QkNorm,
        TensorPresence.Dense => !c.IsMoe,
        TensorPresence.WithExperts => c.IsMoe,
        TensorPresence.WithSharedExpert => c.SharedExpertFfnDim > 0,
        _ => false,
    };

    /// <summary>Whether the tensor can be in a model of this configuration at all.</summary>
    public bool MayExist(ModelConfig c) => Presence == TensorPresence.Optional || IsRequired(c);

    /// <summary>Heads whose rows the converter permutes for interleaved RoPE (0: the tensor is not permuted).</summary>
    public int RopeHeads(ModelConfig c) => Rope switch
    {
        RopeRows.QueryHeads => c.Heads,
        RopeRows.KeyHeads => c.KvHeads,
        _ => 0,
    };
}
