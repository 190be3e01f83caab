namespace FitLM.Model.Architectures;

/// <summary>
/// Mistral (MistralForCausalLM): the Llama decoder under another name. llama.cpp's converter writes it as a
/// "llama" GGUF (with Q/K permuted for interleaved RoPE); FitLM also reads GGUF files that say "mistral".
/// </summary>
public static class MistralFamily
{
    public static ArchitectureFamily Description { get; } = new()
    {
        Name = "mistral",
        GgufNames = ["mistral"],
        GgufNameWritten = "llama",
        HfArchitectures = ["MistralForCausalLM"],
        HfModelTypes = ["mistral"],
        GgufRopeStyle = RopeStyle.Interleaved,
    };
}
