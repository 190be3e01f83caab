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
    /// <summary>The dimensions the KV cache is laid out by.</summary>
    public KvCache.KvShape KvShape => new(Layers, Dim, Heads, KvHeads, HeadDim);
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
    public int ContextLength { get; init; } = 2048;

    public int QDim => Heads * HeadDim;
    public int KvDim => KvHeads * HeadDim;

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
    }
}
