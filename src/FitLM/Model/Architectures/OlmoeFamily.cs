namespace FitLM.Model.Architectures;

/// <summary>
/// OLMoE (OlmoeForCausalLM): RMSNorm over the whole Q and K projections (not per head), rotate-half RoPE, a
/// mixture of experts in every layer whose chosen weights are not renormalized. llama.cpp's loader refuses
/// grouped KV heads here (it sizes k_norm by the embedding); FitLM runs them.
/// </summary>
public static class OlmoeFamily
{
    public static ArchitectureFamily Description { get; } = new()
    {
        Name = "olmoe",
        GgufNames = ["olmoe"],
        GgufNameWritten = "olmoe",
        HfArchitectures = ["OlmoeForCausalLM"],
        HfModelTypes = ["olmoe"],
        GgufRopeStyle = RopeStyle.Neox,
        QkNorm = TensorOption.Always,
        QkNormWholeRow = true,
        Tensors = DecoderTensors.QwenMoe,
    };
}
