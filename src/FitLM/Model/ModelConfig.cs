using FitLM.Model.Architectures;

namespace FitLM.Model;

/// <summary>How RoPE pairs the dimensions of a head.</summary>
public enum RopeStyle
{
    /// <summary>Adjacent pairs (2i, 2i+1): llama.cpp's layout for llama-arch GGUF files (Q/K rows permuted by the converter).</summary>
    Interleaved,
    /// <summary>Pairs (i, i + d/2): Hugging Face's rotate-half, and llama.cpp's NEOX layout (Qwen2/3).</summary>
    Neox,
}

public enum FfnActivation { Silu, Relu, Gelu }

/// <summary>Llama 3 style frequency-dependent RoPE scaling ("rope_type": "llama3").</summary>
public sealed record Llama3RopeScaling(float Factor, float LowFreqFactor, float HighFreqFactor, int OriginalContext);

/// <summary>
/// Shapes and hyper-parameters of a Llama-style decoder, whatever file it came from; the sources fill it from
/// the model's <see cref="ArchitectureFamily"/> description (which options exist, which keys hold them).
/// </summary>
public sealed record ModelConfig
{
    /// <summary>The dimensions the KV cache is laid out by, with how attention scores and masks its positions.</summary>
    public KvCache.KvShape KvShape => new(Layers, Dim, Heads, KvHeads, HeadDim)
    {
        ScoreScale = AttentionScale,
        Softcap = AttentionSoftcap,
        SlidingWindow = SlidingWindow,
        SlidingPeriod = SlidingPeriod,
    };
    public static implicit operator KvCache.KvShape(ModelConfig c) => c.KvShape;

    public required string Architecture { get; init; }
    public required int Dim { get; init; }
    public required int Layers { get; init; }
    public required int Heads { get; init; }
    public required int KvHeads { get; init; }
    public required int HeadDim { get; init; }
    public required int FfnDim { get; init; }
    public required int Vocab { get; init; }
    public float RmsEps { get; init; } = 1e-5f;
    public float RopeTheta { get; init; } = 10000f;
    /// <summary>Dimensions of each head that RoPE rotates (the rest pass through).</summary>
    public int RopeDims { get; init; }
    public RopeStyle RopeStyle { get; init; }
    /// <summary>Linear position scaling (positions are divided by this).</summary>
    public float RopeLinearFactor { get; init; } = 1f;
    public Llama3RopeScaling? RopeLlama3 { get; init; }
    public FfnActivation Activation { get; init; } = FfnActivation.Silu;
    public bool QkvBias { get; init; }
    public bool QkNorm { get; init; }
    /// <summary>Q/K norms over the whole projection (OLMoE: [QDim], [KvDim]) rather than per head ([HeadDim]).</summary>
    public bool QkNormWholeRow { get; init; }
    public int ContextLength { get; init; } = 2048;

    // ---- Gemma: scaled embeddings, (1 + w) norms, post-norms, soft-capping, sliding-window layers.
    /// <summary>The token embedding is multiplied by this (Gemma: √Dim).</summary>
    public float EmbeddingScale { get; init; } = 1f;
    /// <summary>Added to every RMSNorm weight as it loads: Gemma's Hugging Face weights store w for (1 + w); its GGUF files store 1 + w.</summary>
    public float NormWeightOffset { get; init; }
    /// <summary>Norms after attention and after the FFN, before each residual add (Gemma 2/3: post_attention_norm, post_ffw_norm).</summary>
    public bool PostNorms { get; init; }
    /// <summary>Scale of q·k (0: 1/√HeadDim; Gemma: query_pre_attn_scalar^-½).</summary>
    public float AttentionScale { get; init; }
    /// <summary>Attention scores become c·tanh(s/c) (Gemma 2); 0 for none.</summary>
    public float AttentionSoftcap { get; init; }
    /// <summary>Output logits become c·tanh(z/c) (Gemma 2); 0 for none.</summary>
    public float FinalSoftcap { get; init; }
    /// <summary>Tokens a sliding-window layer sees, itself included (0: every layer attends to the whole context).</summary>
    public int SlidingWindow { get; init; }
    /// <summary>
    /// Which layers slide: layer l does when l % SlidingPeriod &lt; SlidingPeriod - 1 (llama.cpp's swa pattern:
    /// Gemma 2 is 2, Gemma 3 is 6); 1 makes every layer slide. Ignored when <see cref="SlidingWindow"/> is 0.
    /// </summary>
    public int SlidingPeriod { get; init; } = 1;
    /// <summary>RoPE base of the sliding-window layers (Gemma 3's local base); 0: <see cref="RopeTheta"/>.</summary>
    public float RopeThetaSliding { get; init; }

    // ---- Phi-3: fused projections.
    /// <summary>Q, K and V are one matrix attn_qkv [Dim → QDim + 2·KvDim], rows in that order.</summary>
    public bool FusedQkv { get; init; }
    /// <summary>Gate and up are one matrix ffn_up [Dim → 2·FfnDim], the gate's rows first.</summary>
    public bool FusedGateUp { get; init; }

    // ---- Mixture of experts.
    /// <summary>Routed experts per layer (0: a dense model).</summary>
    public int ExpertCount { get; init; }
    /// <summary>Experts each token runs (top-k).</summary>
    public int ExpertsUsed { get; init; }
    /// <summary>Width of one routed expert's FFN.</summary>
    public int ExpertFfnDim { get; init; }
    /// <summary>Width of the shared expert (Qwen2-MoE), gated by sigmoid(ffn_gate_inp_shexp · x); 0 for none.</summary>
    public int SharedExpertFfnDim { get; init; }
    /// <summary>The chosen experts' softmax weights are renormalized to sum to 1 (Mixtral, Qwen3-MoE), or kept (Qwen2-MoE, OLMoE).</summary>
    public bool ExpertWeightsNorm { get; init; }

    public int QDim => Heads * HeadDim;
    public int KvDim => KvHeads * HeadDim;
    public bool IsMoe => ExpertCount > 0;
    /// <summary>The widest FFN a layer runs: scratch for the FFN's hidden rows.</summary>
    public int ScratchFfnDim => Math.Max(IsMoe ? Math.Max(ExpertFfnDim, SharedExpertFfnDim) : FfnDim, 1) * (FusedGateUp ? 2 : 1);
    /// <summary>Whether layer <paramref name="layer"/> attends through a sliding window.</summary>
    public bool IsSliding(int layer) => KvCache.KvShape.Slides(layer, SlidingWindow, SlidingPeriod);
    /// <summary>The window of a layer: tokens it sees, itself included; 0 for the whole context.</summary>
    public int WindowOf(int layer) => IsSliding(layer) ? SlidingWindow : 0;

    /// <summary>The description of this model's architecture family (tensors, names, RoPE layout, options).</summary>
    public ArchitectureFamily Family => ArchitectureRegistry.Get(Architecture, "model configuration");

    /// <summary>Checks the shapes are consistent and not absurd; throws a FitLMException naming the problem.</summary>
    public void Validate(string source)
    {
        void Check(bool ok, string what)
        {
            if (!ok) throw new FitLMException($"{source}: {what}");
        }
        Check(ArchitectureRegistry.Find(Architecture) != null,
            $"unsupported architecture '{Architecture}' (supported: {ArchitectureRegistry.SupportedNames})");
        Check(Dim is > 0 and <= 1 << 16, $"embedding length {Dim} is out of range");
        Check(Layers is > 0 and <= 1024, $"block count {Layers} is out of range");
        Check(Heads is > 0 and <= 1024, $"head count {Heads} is out of range");
        Check(KvHeads > 0 && KvHeads <= Heads && Heads % KvHeads == 0, $"KV head count {KvHeads} does not divide head count {Heads}");
        Check(HeadDim is > 0 and <= 1024 && HeadDim % 2 == 0, $"head dimension {HeadDim} is out of range");
        Check(RopeDims > 0 && RopeDims <= HeadDim && RopeDims % 2 == 0, $"RoPE dimension count {RopeDims} is out of range");
        Check(FfnDim is > 0 and <= 1 << 20, $"feed-forward length {FfnDim} is out of range");
        Check(Vocab is > 0 and <= 1 << 22, $"vocabulary size {Vocab} is out of range");
        Check(RmsEps > 0 && RmsEps < 1, $"RMS norm epsilon {RmsEps} is out of range");
        Check(RopeTheta > 0 && float.IsFinite(RopeTheta), $"RoPE base {RopeTheta} is out of range");
        Check(ContextLength > 0, $"context length {ContextLength} is out of range");
        Check(SlidingWindow >= 0 && SlidingPeriod is > 0 and <= 1024, $"sliding window {SlidingWindow} (period {SlidingPeriod}) is out of range");
        Check(AttentionSoftcap >= 0 && FinalSoftcap >= 0 && float.IsFinite(AttentionSoftcap) && float.IsFinite(FinalSoftcap), "soft-capping values are out of range");
        if (IsMoe || ExpertsUsed != 0)
        {
            Check(ExpertCount is > 0 and <= 4096, $"expert count {ExpertCount} is out of range");
            Check(ExpertsUsed > 0 && ExpertsUsed <= ExpertCount, $"experts used per token {ExpertsUsed} is out of range (1..{ExpertCount})");
            Check(ExpertFfnDim is > 0 and <= 1 << 20, $"expert feed-forward length {ExpertFfnDim} is out of range");
            Check(SharedExpertFfnDim is >= 0 and <= 1 << 20, $"shared expert feed-forward length {SharedExpertFfnDim} is out of range");
        }
    }
}
