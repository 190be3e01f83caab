namespace FitLM.Model.Architectures;

/// <summary>
/// Qwen2 and Qwen2.5 (Qwen2ForCausalLM): the Llama decoder with Q/K/V biases always, and rotate-half RoPE in
/// GGUF too (llama.cpp's NEOX), so the converter keeps Q/K rows as they are.
/// </summary>
public static class Qwen2Family
{
    public static ArchitectureFamily Description { get; } = new()
    {
        Name = "qwen2",
        GgufNames = ["qwen2"],
        GgufNameWritten = "qwen2",
        HfArchitectures = ["Qwen2ForCausalLM"],
        HfModelTypes = ["qwen2"],
        GgufRopeStyle = RopeStyle.Neox,
        QkvBias = TensorOption.Always,
    };
}
