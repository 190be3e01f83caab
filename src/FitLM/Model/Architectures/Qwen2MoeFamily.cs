namespace FitLM.Model.Architectures;

/// <summary>
/// Qwen2-MoE (Qwen2MoeForCausalLM): Qwen2's attention (Q/K/V biases, rotate-half RoPE) with a mixture of
/// experts in every layer plus a shared expert whose output is scaled by sigmoid(ffn_gate_inp_shexp · x); the
/// chosen experts' softmax weights are kept as they are unless norm_topk_prob says otherwise.
/// </summary>
public static class Qwen2MoeFamily
{
    public static ArchitectureFamily Description { get; } = new()
    {
        Name = "qwen2moe",
        GgufNames = ["qwen2moe"],
        GgufNameWritten = "qwen2moe",
        HfArchitectures = ["Qwen2MoeForCausalLM"],
        HfModelTypes = ["qwen2_moe"],
        GgufRopeStyle = RopeStyle.Neox,
        QkvBias = TensorOption.Always,
        Tensors = DecoderTensors.QwenMoe,
    };
}
