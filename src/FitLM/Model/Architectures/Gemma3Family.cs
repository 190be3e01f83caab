namespace FitLM.Model.Architectures;

/// <summary>
/// Gemma 3, text (Gemma3ForCausalLM): Gemma 2's layer (scaled embeddings, (1 + w) norms, pre and post norms,
/// GELU) with per-head Q/K norms instead of soft-capping, and sliding-window layers (five of every six in the
/// released models, llama.cpp's default period) with their own RoPE base (10000) beside the global layers' (1e6).
/// </summary>
public static class Gemma3Family
{
    public static ArchitectureFamily Description { get; } =
        Gemma2Family.Gemma("gemma3", "Gemma3ForCausalLM", "gemma3_text", TensorOption.Always, slidingPeriod: 6, ropeThetaSliding: 10000f);
}
