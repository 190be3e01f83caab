namespace FitLM.Model.Architectures;

/// <summary>
/// Qwen3 (Qwen3ForCausalLM): the Llama decoder with a per-head RMSNorm on Q and K before RoPE (attn_q_norm,
/// attn_k_norm), head_dim independent of hidden/heads, rotate-half RoPE in GGUF (NEOX), no Q/K/V biases unless
/// attention_bias says so.
/// </summary>
public static class Qwen3Family
{
    public static ArchitectureFamily Description { get; } = new()
    {
        Name = "qwen3",
        GgufNames = ["qwen3"],
        GgufNameWritten = "qwen3",
        HfArchitectures = ["Qwen3ForCausalLM"],
        HfModelTypes = ["qwen3"],
        GgufRopeStyle = RopeStyle.Neox,
        QkNorm = TensorOption.Always,
    };
}
