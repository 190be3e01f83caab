namespace FitLM.Model.Architectures;

/// <summary>
/// The tensors of the decoder families, under llama.cpp's names (llama-arch.cpp's LLM_TENSOR_NAMES) and
/// transformers' names, built from a few parts: what is outside the blocks, attention, the norms around it, a
/// dense gated FFN, and a mixture of experts (stacked `*_exps` tensors in GGUF, one tensor per expert in
/// Hugging Face folders). Q/K/V biases, Q/K norms and the shared expert are in the tables; a model's
/// configuration says whether it has them.
/// </summary>
public static class DecoderTensors
{
    private static readonly TensorSpec[] Globals =
    [
        new("token_embd.weight", "model.embed_tokens.weight", false, c => [c.Dim, c.Vocab]),
        new("output_norm.weight", "model.norm.weight", false, c => [c.Dim]),
        // Absent when the head is tied to token_embd (tie_word_embeddings).
        new("output.weight", "lm_head.weight", false, c => [c.Dim, c.Vocab], TensorPresence.Optional),
        // Llama 3.1 RoPE scaling as llama.cpp's converter writes it: per-frequency divisors (computed, no HF tensor).
        new("rope_freqs.weight", null, false, c => [c.RopeDims / 2], TensorPresence.Optional),
    ];

    private static readonly TensorSpec[] AttentionNorm = [new("attn_norm.weight", "input_layernorm.weight", true, c => [c.Dim])];

    private static readonly TensorSpec[] SeparateQkv =
    [
        new("attn_q.weight", "self_attn.q_proj.weight", true, c => [c.Dim, c.QDim], Rope: RopeRows.QueryHeads),
        new("attn_k.weight", "self_attn.k_proj.weight", true, c => [c.Dim, c.KvDim], Rope: RopeRows.KeyHeads),
        new("attn_v.weight", "self_attn.v_proj.weight", true, c => [c.Dim, c.KvDim]),
        new("attn_q.bias", "self_attn.q_proj.bias", true, c => [c.QDim], TensorPresence.WithQkvBias, RopeRows.QueryHeads),
        new("attn_k.bias", "self_attn.k_proj.bias", true, c => [c.KvDim], TensorPresence.WithQkvBias, RopeRows.KeyHeads),
        new("attn_v.bias", "self_attn.v_proj.bias", true, c => [c.KvDim], TensorPresence.WithQkvBias),
        // Per head [HeadDim] (Qwen3, Gemma 3), or over the whole projection (OLMoE).
        new("attn_q_norm.weight", "self_attn.q_norm.weight", true, c => [c.QkNormWholeRow ? c.QDim : c.HeadDim], TensorPresence.WithQkNorm),
        new("attn_k_norm.weight", "self_attn.k_norm.weight", true, c => [c.QkNormWholeRow ? c.KvDim : c.HeadDim], TensorPresence.WithQkNorm),
    ];

    private static readonly TensorSpec[] Output = [new("attn_output.weight", "self_attn.o_proj.weight", true, c => [c.QDim, c.Dim])];

    /// <summary>Llama's FFN norm: transformers calls it post_attention_layernorm.</summary>
    private static readonly TensorSpec[] FfnNorm = [new("ffn_norm.weight", "post_attention_layernorm.weight", true, c => [c.Dim])];

    private static readonly TensorSpec[] DenseFfn =
    [
        new("ffn_gate.weight", "mlp.gate_proj.weight", true, c => [c.Dim, c.FfnDim], TensorPresence.Dense, FeedForward: true),
        new("ffn_up.weight", "mlp.up_proj.weight", true, c => [c.Dim, c.FfnDim], TensorPresence.Dense, FeedForward: true),
        new("ffn_down.weight", "mlp.down_proj.weight", true, c => [c.FfnDim, c.Dim], TensorPresence.Dense, FeedForward: true),
    ];

    /// <summary>A router and stacked experts under Hugging Face names: "{moe}.gate", "{moe}.experts.{e}.{gate,up,down}".</summary>
    private static TensorSpec[] Experts(string moe, string gate, string up, string down) =>
    [
        new("ffn_gate_inp.weight", $"{moe}.gate.weight", true, c => [c.Dim, c.ExpertCount], TensorPresence.WithExperts),
        new("ffn_gate_exps.weight", $"{moe}.experts.{TensorSpec.ExpertMark}.{gate}.weight", true,
            c => [c.Dim, c.ExpertFfnDim, c.ExpertCount], TensorPresence.WithExperts, Experts: true),
        new("ffn_up_exps.weight", $"{moe}.experts.{TensorSpec.ExpertMark}.{up}.weight", true,
            c => [c.Dim, c.ExpertFfnDim, c.ExpertCount], TensorPresence.WithExperts, Experts: true),
        new("ffn_down_exps.weight", $"{moe}.experts.{TensorSpec.ExpertMark}.{down}.weight", true,
            c => [c.ExpertFfnDim, c.Dim, c.ExpertCount], TensorPresence.WithExperts, Experts: true),
    ];

    /// <summary>Mixtral's names (w1 gate, w3 up, w2 down), which llama.cpp's converter writes as a "llama" file with experts.</summary>
    private static readonly TensorSpec[] MixtralExperts = Experts("block_sparse_moe", "w1", "w3", "w2");

    /// <summary>Qwen2/3-MoE's and OLMoE's names; Qwen2-MoE adds a shared expert behind a sigmoid gate.</summary>
    private static readonly TensorSpec[] QwenExperts =
    [
        .. Experts("mlp", "gate_proj", "up_proj", "down_proj"),
        new("ffn_gate_inp_shexp.weight", "mlp.shared_expert_gate.weight", true, c => [c.Dim], TensorPresence.WithSharedExpert),
        new("ffn_gate_shexp.weight", "mlp.shared_expert.gate_proj.weight", true, c => [c.Dim, c.SharedExpertFfnDim], TensorPresence.WithSharedExpert),
        new("ffn_up_shexp.weight", "mlp.shared_expert.up_proj.weight", true, c => [c.Dim, c.SharedExpertFfnDim], TensorPresence.WithSharedExpert),
        new("ffn_down_shexp.weight", "mlp.shared_expert.down_proj.weight", true, c => [c.SharedExpertFfnDim, c.Dim], TensorPresence.WithSharedExpert),
    ];

    /// <summary>Llama, Mistral, Qwen2, Qwen3; with Mixtral's experts, since llama.cpp writes Mixtral as "llama".</summary>
    public static IReadOnlyList<TensorSpec> Llama { get; } = [.. Globals, .. AttentionNorm, .. SeparateQkv, .. Output, .. FfnNorm, .. DenseFfn, .. MixtralExperts];

    /// <summary>Qwen2-MoE, Qwen3-MoE and OLMoE: every layer's FFN is a mixture of experts.</summary>
    public static IReadOnlyList<TensorSpec> QwenMoe { get; } = [.. Globals, .. AttentionNorm, .. SeparateQkv, .. Output, .. FfnNorm, .. QwenExperts];

    /// <summary>Phi-3: Q, K, V in one matrix, gate and up in one (llama.cpp keeps both fused).</summary>
    public static IReadOnlyList<TensorSpec> Phi3 { get; } =
    [
        .. Globals, .. AttentionNorm,
        new("attn_qkv.weight", "self_attn.qkv_proj.weight", true, c => [c.Dim, c.QDim + 2L * c.KvDim]),
        .. Output, .. FfnNorm,
        new("ffn_up.weight", "mlp.gate_up_proj.weight", true, c => [c.Dim, 2L * c.FfnDim], FeedForward: true),
        new("ffn_down.weight", "mlp.down_proj.weight", true, c => [c.FfnDim, c.Dim], FeedForward: true),
    ];

    /// <summary>Gemma 2 and 3: a norm after attention and one after the FFN; transformers' post_attention_layernorm is that first one.</summary>
    public static IReadOnlyList<TensorSpec> Gemma { get; } =
    [
        .. Globals, .. AttentionNorm, .. SeparateQkv, .. Output,
        new("post_attention_norm.weight", "post_attention_layernorm.weight", true, c => [c.Dim]),
        new("ffn_norm.weight", "pre_feedforward_layernorm.weight", true, c => [c.Dim]),
        new("post_ffw_norm.weight", "post_feedforward_layernorm.weight", true, c => [c.Dim]),
        .. DenseFfn,
    ];
}
