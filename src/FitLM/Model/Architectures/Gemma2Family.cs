namespace FitLM.Model.Architectures;

/// <summary>
/// Gemma 2 (Gemma2ForCausalLM): embeddings scaled by √Dim; RMSNorms of (1 + w), stored as w by transformers and
/// as 1 + w by llama.cpp's converter; a norm after attention and after the FFN as well as before; GELU (tanh)
/// gate; attention scores and final logits soft-capped (c·tanh(x/c)); every other layer (the even ones) attends
/// through a sliding window; tied head; rotate-half RoPE in both layouts.
/// </summary>
public static class Gemma2Family
{
    public static ArchitectureFamily Description { get; } = Gemma("gemma2", "Gemma2ForCausalLM", "gemma2", TensorOption.Never, slidingPeriod: 2, ropeThetaSliding: 0);

    /// <summary>What Gemma 2 and 3 share; they differ in their names, Q/K norms and sliding layers.</summary>
    internal static ArchitectureFamily Gemma(string name, string hfArchitecture, string hfModelType, TensorOption qkNorm,
        int slidingPeriod, float ropeThetaSliding) => new()
    {
        Name = name,
        GgufNames = [name],
        GgufNameWritten = name,
        HfArchitectures = [hfArchitecture],
        HfModelTypes = [hfModelType],
        GgufRopeStyle = RopeStyle.Neox,
        HfDefaultNormEpsilon = 1e-6f,
        GgufDefaultNormEpsilon = 1e-6f,
        DefaultActivation = FfnActivation.Gelu,
        QkvBias = TensorOption.Never,
        QkNorm = qkNorm,
        Tensors = DecoderTensors.Gemma,
        Keys = ConfigKeys.Standard with { HfActivation = "hidden_activation" },
        ScalesEmbedding = true,
        PostNorms = true,
        HfNormOffset = 1f,
        GemmaAttention = true,
        GgufSlidingPeriod = slidingPeriod,
        GgufRopeThetaSliding = ropeThetaSliding,
    };
}
