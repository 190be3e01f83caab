namespace FitLM.Model.Architectures;

/// <summary>
/// Mixtral (MixtralForCausalLM): the Llama decoder whose FFN is a mixture of experts (router
/// block_sparse_moe.gate, experts w1/w3/w2 = gate/up/down), softmax over the router's logits, top-k, the chosen
/// weights renormalized. llama.cpp's converter writes it as a "llama" GGUF with stacked expert tensors and
/// Q/K permuted for interleaved RoPE; such a file loads as the llama family with experts.
/// </summary>
public static class MixtralFamily
{
    public static ArchitectureFamily Description { get; } = new()
    {
        Name = "mixtral",
        GgufNames = [],
        GgufNameWritten = "llama",
        HfArchitectures = ["MixtralForCausalLM"],
        HfModelTypes = ["mixtral"],
        GgufRopeStyle = RopeStyle.Interleaved,
        DefaultExpertWeightsNorm = true,
    };
}
