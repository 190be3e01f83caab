namespace FitLM.Model.Architectures;

/// <summary>
/// Llama 2 and 3 (LlamaForCausalLM): RMSNorm, SwiGLU FFN (or ReLU for "relufied" models, which GGUF marks with
/// fitlm.ffn_activation), optional Q/K/V biases (attention_bias), Llama 3 RoPE scaling (converted to
/// rope_freqs.weight), tied or untied head. GGUF files use interleaved RoPE pairs, so the converter permutes Q/K.
/// A "llama" GGUF file may be a mixture of experts: llama.cpp's converter writes Mixtral that way (experts
/// renormalized, as llama.cpp's llama graph does).
/// </summary>
public static class LlamaFamily
{
    public static ArchitectureFamily Description { get; } = new()
    {
        Name = "llama",
        GgufNames = ["llama"],
        GgufNameWritten = "llama",
        HfArchitectures = ["LlamaForCausalLM"],
        HfModelTypes = ["llama"],
        GgufRopeStyle = RopeStyle.Interleaved,
        DefaultExpertWeightsNorm = true,
    };
}
