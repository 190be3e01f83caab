namespace FitLM.Model.Architectures;

/// <summary>
/// Gemma 3, text (Gemma3ForCausalLM): Gemma 2's layer (scaled embeddings, (1 + w) norms, pre and post norms,
/// GELU) with per-head Q/K norms instead of soft-capping, and sliding-window layers (five of every six in the
/// released models) with their own RoPE base (10000) beside the global layers' (1e6).
/// </summary>
public static class Gemma3Family
{
    public static ArchitectureFamily Description { get; } = new()
    {
        Name = "gemma3",
        GgufNames = ["gemma3"],
        GgufNameWritten = "gemma3",
        HfArchitectures = ["Gemma3ForCausalLM"],
        HfModelTypes = ["gemma3_text"],
        GgufRopeStyle = RopeStyle.Neox,
        HfDefaultNormEpsilon = 1e-6f,
        GgufDefaultNormEpsilon = 1e-6f,
        DefaultActivation = FfnActivation.Gelu,
        QkvBias = TensorOption.Never,
        QkNorm = TensorOption.Always,
        Tensors = DecoderTensors.Gemma,
        Keys = ConfigKeys.Standard with { HfActivation = "hidden_activation" },
        ScalesEmbedding = true,
        PostNorms = true,
        HfNormOffset = 1f,
        GemmaAttention = true,
        GgufSlidingPeriod = 6,
        GgufRopeThetaSliding = 10000f,
    };
}
