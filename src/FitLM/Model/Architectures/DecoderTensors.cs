namespace FitLM.Model.Architectures;

/// <summary>
/// The tensors of a Llama-style decoder (token embedding, per layer attention and gated FFN, final norm and
/// head), under llama.cpp's names (llama-arch.cpp's LLM_TENSOR_NAMES) and transformers' names. Q/K/V biases and
/// Q/K norms are in the table; a family's configuration says whether a model has them.
/// </summary>
public static class DecoderTensors
{
    public static IReadOnlyList<TensorSpec> Llama { get; } =
    [
        new("token_embd.weight", "model.embed_tokens.weight", false, c => [c.Dim, c.Vocab]),
        new("output_norm.weight", "model.norm.weight", false, c => [c.Dim]),
        // Absent when the head is tied to token_embd (tie_word_embeddings).
        new("output.weight", "lm_head.weight", false, c => [c.Dim, c.Vocab], TensorPresence.Optional),
        // Llama 3.1 RoPE scaling as llama.cpp's converter writes it: per-frequency divisors (computed, no HF tensor).
        new("rope_freqs.weight", null, false, c => [c.RopeDims / 2], TensorPresence.Optional),

        new("attn_norm.weight", "input_layernorm.weight", true, c => [c.Dim]),
        new("attn_q.weight", "self_attn.q_proj.weight", true, c => [c.Dim, c.QDim], Rope: RopeRows.QueryHeads),
        new("attn_k.weight", "self_attn.k_proj.weight", true, c => [c.Dim, c.KvDim], Rope: RopeRows.KeyHeads),
        new("attn_v.weight", "self_attn.v_proj.weight", true, c => [c.Dim, c.KvDim]),
        new("attn_output.weight", "self_attn.o_proj.weight", true, c => [c.QDim, c.Dim]),
        new("attn_q.bias", "self_attn.q_proj.bias", true, c => [c.QDim], TensorPresence.WithQkvBias, RopeRows.QueryHeads),
        new("attn_k.bias", "self_attn.k_proj.bias", true, c => [c.KvDim], TensorPresence.WithQkvBias, RopeRows.KeyHeads),
        new("attn_v.bias", "self_attn.v_proj.bias", true, c => [c.KvDim], TensorPresence.WithQkvBias),
        new("attn_q_norm.weight", "self_attn.q_norm.weight", true, c => [c.HeadDim], TensorPresence.WithQkNorm),
        new("attn_k_norm.weight", "self_attn.k_norm.weight", true, c => [c.HeadDim], TensorPresence.WithQkNorm),
        new("ffn_norm.weight", "post_attention_layernorm.weight", true, c => [c.Dim]),
        new("ffn_gate.weight", "mlp.gate_proj.weight", true, c => [c.Dim, c.FfnDim], FeedForward: true),
        new("ffn_up.weight", "mlp.up_proj.weight", true, c => [c.Dim, c.FfnDim], FeedForward: true),
        new("ffn_down.weight", "mlp.down_proj.weight", true, c => [c.FfnDim, c.Dim], FeedForward: true),
    ];
}
