namespace FitLM.Model.Architectures;

/// <summary>
/// One configuration value under its two names: the GGUF key after "{arch}." (llama.cpp's LLM_KV names) and
/// the config.json key of Hugging Face (null where config.json has none).
/// </summary>
public sealed record ConfigKey(string Gguf, string? Hf)
{
    /// <summary>The full GGUF key for the architecture name a file gives: "llama.context_length".</summary>
    public string GgufKey(string ggufArchitecture) => $"{ggufArchitecture}.{Gguf}";
}

/// <summary>How an architecture's configuration is named in GGUF metadata and in config.json.</summary>
public sealed record ConfigKeys
{
    public ConfigKey ContextLength { get; init; } = new("context_length", "max_position_embeddings");
    public ConfigKey EmbeddingLength { get; init; } = new("embedding_length", "hidden_size");
    public ConfigKey BlockCount { get; init; } = new("block_count", "num_hidden_layers");
    public ConfigKey FeedForwardLength { get; init; } = new("feed_forward_length", "intermediate_size");
    public ConfigKey HeadCount { get; init; } = new("attention.head_count", "num_attention_heads");
    public ConfigKey HeadCountKv { get; init; } = new("attention.head_count_kv", "num_key_value_heads");
    public ConfigKey KeyLength { get; init; } = new("attention.key_length", "head_dim");
    public ConfigKey ValueLength { get; init; } = new("attention.value_length", "head_dim");
    public ConfigKey NormEpsilon { get; init; } = new("attention.layer_norm_rms_epsilon", "rms_norm_eps");
    public ConfigKey RopeFreqBase { get; init; } = new("rope.freq_base", "rope_theta");
    public ConfigKey RopeDimensionCount { get; init; } = new("rope.dimension_count", null);
    public ConfigKey RopeScalingType { get; init; } = new("rope.scaling.type", null);
    public ConfigKey RopeScalingFactor { get; init; } = new("rope.scaling.factor", null);
    public ConfigKey VocabSize { get; init; } = new("vocab_size", "vocab_size");

    // Mixture of experts (llama.cpp's LLM_KV_EXPERT_*; transformers' MoE configs).
    public ConfigKey ExpertCount { get; init; } = new("expert_count", "num_experts");
    /// <summary>Mixtral's (and transformers 5's Qwen3-MoE's) name for the expert count.</summary>
    public string HfExpertCountAlternative { get; init; } = "num_local_experts";
    public ConfigKey ExpertsUsed { get; init; } = new("expert_used_count", "num_experts_per_tok");
    /// <summary>Routed experts' width; configs without it (Mixtral, OLMoE) use intermediate_size.</summary>
    public ConfigKey ExpertFeedForwardLength { get; init; } = new("expert_feed_forward_length", "moe_intermediate_size");
    public ConfigKey SharedExpertFeedForwardLength { get; init; } = new("expert_shared_feed_forward_length", "shared_expert_intermediate_size");
    public ConfigKey ExpertWeightsNorm { get; init; } = new("expert_weights_norm", "norm_topk_prob");

    // Gemma.
    public ConfigKey AttentionSoftcap { get; init; } = new("attn_logit_softcapping", "attn_logit_softcapping");
    public ConfigKey FinalSoftcap { get; init; } = new("final_logit_softcapping", "final_logit_softcapping");
    public ConfigKey SlidingWindow { get; init; } = new("attention.sliding_window", "sliding_window");
    /// <summary>Which layers slide: a period, or one flag per layer (llama.cpp's LLM_KV_ATTENTION_SLIDING_WINDOW_PATTERN).</summary>
    public ConfigKey SlidingWindowPattern { get; init; } = new("attention.sliding_window_pattern", "sliding_window_pattern");
    public ConfigKey RopeFreqBaseSliding { get; init; } = new("rope.freq_base_swa", "rope_local_base_freq");
    /// <summary>config.json: q·k is scaled by this to the power -½ (Gemma).</summary>
    public string HfQueryPreAttentionScalar { get; init; } = "query_pre_attn_scalar";
    /// <summary>config.json: "sliding_attention" / "full_attention" per layer (transformers 5).</summary>
    public string HfLayerTypes { get; init; } = "layer_types";

    /// <summary>config.json: whether Q/K/V projections have biases (for families where that is optional).</summary>
    public string HfAttentionBias { get; init; } = "attention_bias";
    /// <summary>config.json: the FFN activation's name.</summary>
    public string HfActivation { get; init; } = "hidden_act";
    /// <summary>config.json: whether the output head shares token_embd's weights.</summary>
    public string HfTiedEmbeddings { get; init; } = "tie_word_embeddings";
    /// <summary>GGUF: FitLM's own key for an FFN activation llama.cpp's architecture lacks (ReLU llama).</summary>
    public string GgufActivation { get; init; } = "fitlm.ffn_activation";

    /// <summary>The keys of llama.cpp's llama-like architectures and of transformers' Llama-like configs.</summary>
    public static ConfigKeys Standard { get; } = new();
}
