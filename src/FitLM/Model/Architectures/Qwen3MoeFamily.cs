namespace FitLM.Model.Architectures;

/// <summary>
/// Qwen3-MoE (Qwen3MoeForCausalLM): Qwen3's attention (per-head Q/K norms, rotate-half RoPE) with a mixture
/// of experts in every layer, the chosen experts' weights renormalized (norm_topk_prob).
/// </summary>
public static class Qwen3MoeFamily
{
    public static ArchitectureFamily Description { get; } = new()
    {
        Name = "qwen3moe",
        GgufNames = ["qwen3moe"],
        GgufNameWritten = "qwen3moe",
        HfArchitectures = ["Qwen3MoeForCausalLM"],
        HfModelTypes = ["qwen3_moe"],
        GgufRopeStyle = RopeStyle.Neox,
        QkNorm = TensorOption.Always,
        Tensors = DecoderTensors.QwenMoe,
        DefaultExpertWeightsNorm = true,
    };
}
