namespace FitLM.Model.Architectures;

/// <summary>
/// Phi-3 (Phi3ForCausalLM): the Llama decoder with Q, K and V in one matrix (attn_qkv, rows Q then K then V)
/// and gate and up in one (ffn_up with 2·FFN rows, the gate's first), both kept fused in GGUF as llama.cpp
/// does; rotate-half RoPE in both layouts. LongRoPE scaling (the 128k models) is not supported.
/// </summary>
public static class Phi3Family
{
    public static ArchitectureFamily Description { get; } = new()
    {
        Name = "phi3",
        GgufNames = ["phi3"],
        GgufNameWritten = "phi3",
        HfArchitectures = ["Phi3ForCausalLM"],
        HfModelTypes = ["phi3"],
        GgufRopeStyle = RopeStyle.Neox,
        QkvBias = TensorOption.Never,
        Tensors = DecoderTensors.Phi3,
        FusedQkv = true,
        FusedGateUp = true,
    };
}
