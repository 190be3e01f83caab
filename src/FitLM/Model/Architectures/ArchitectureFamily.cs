using System.Text.RegularExpressions;

namespace FitLM.Model.Architectures;

/// <summary>The normalization a family uses before attention, before the FFN and at the end.</summary>
public enum NormKind { Rms }

/// <summary>Whether a family's models have an optional group of tensors (Q/K/V biases, Q/K norms).</summary>
public enum TensorOption
{
    /// <summary>Never: the family has no such tensors.</summary>
    Never,
    /// <summary>As the model says: config.json's flag for a Hugging Face folder, the tensors' presence for a GGUF file.</summary>
    FromModel,
    /// <summary>Always: the family defines them (Qwen2's Q/K/V biases, Qwen3's Q/K norms).</summary>
    Always,
}

/// <summary>
/// Everything that tells one architecture family from another, in one place (as llama.cpp's src/models/
/// and llama-arch.cpp's tables do): its names in GGUF and in Hugging Face configs, its tensors under both
/// names, which optional tensors it has, its norm, RoPE layout and FFN activation, and its metadata keys.
/// The model sources, the validation and the converter read this instead of testing architecture names.
/// Each family is one file beside this one, registered in <see cref="ArchitectureRegistry"/>.
/// </summary>
public sealed partial class ArchitectureFamily
{
    /// <summary>The engine's name for the family (<see cref="ModelConfig.Architecture"/>, `fitlm info`).</summary>
    public required string Name { get; init; }
    /// <summary>general.architecture values of GGUF files of this family.</summary>
    public required IReadOnlyList<string> GgufNames { get; init; }
    /// <summary>general.architecture as llama.cpp's converter writes it (Mistral is written as "llama").</summary>
    public required string GgufNameWritten { get; init; }
    /// <summary>config.json "architectures" entries (transformers class names), as llama.cpp's converter keys on them.</summary>
    public required IReadOnlyList<string> HfArchitectures { get; init; }
    /// <summary>config.json "model_type" values, for configs without "architectures".</summary>
    public required IReadOnlyList<string> HfModelTypes { get; init; }

    /// <summary>
    /// How RoPE pairs dimensions in the family's GGUF files: llama.cpp's LLAMA_ROPE_TYPE_NORM (interleaved,
    /// llama and mistral) or NEOX (rotate-half, Qwen). Hugging Face weights are always rotate-half.
    /// </summary>
    public required RopeStyle GgufRopeStyle { get; init; }
    /// <summary>How RoPE pairs dimensions in the family's Hugging Face weights (transformers' rotate_half).</summary>
    public RopeStyle HfRopeStyle { get; init; } = RopeStyle.Neox;
    /// <summary>The converter permutes Q/K rows (convert_hf_to_gguf's LlamaModel.permute) when the two layouts differ.</summary>
    public bool ConverterPermutesQk => HfRopeStyle != GgufRopeStyle;

    public NormKind Norm { get; init; } = NormKind.Rms;
    /// <summary>The norm epsilon when a GGUF file does not give one (llama.cpp's default).</summary>
    public float GgufDefaultNormEpsilon { get; init; } = 1e-5f;
    /// <summary>The norm epsilon when config.json does not give one (transformers' default for these families).</summary>
    public float HfDefaultNormEpsilon { get; init; } = 1e-6f;
    /// <summary>The FFN activation when the model does not name one (down(act(gate(x)) * up(x))).</summary>
    public FfnActivation DefaultActivation { get; init; } = FfnActivation.Silu;
    public TensorOption QkvBias { get; init; } = TensorOption.FromModel;
    public TensorOption QkNorm { get; init; } = TensorOption.Never;
    /// <summary>Whether the output head may be tied to token_embd (no output.weight).</summary>
    public bool OutputMayBeTied { get; init; } = true;
    /// <summary>Q/K norms over the whole projection rather than per head (OLMoE).</summary>
    public bool QkNormWholeRow { get; init; }

    /// <summary>Gemma: embeddings times √Dim, a norm after attention and after the FFN, (1 + w) norms.</summary>
    public bool ScalesEmbedding { get; init; }
    public bool PostNorms { get; init; }
    /// <summary>Added to every norm weight of a Hugging Face file (Gemma's (1 + w)); llama.cpp's converter adds it to the GGUF's.</summary>
    public float HfNormOffset { get; init; }
    /// <summary>Whether the family reads soft-capping and sliding-window settings (llama.cpp ignores them for Mistral and Qwen).</summary>
    public bool GemmaAttention { get; init; }
    /// <summary>The sliding-window period of a GGUF file that does not give one (llama.cpp's set_swa_pattern: Gemma 2 is 2, Gemma 3 is 6).</summary>
    public int GgufSlidingPeriod { get; init; } = 1;
    /// <summary>The RoPE base of sliding layers in a GGUF file that does not give one (llama.cpp: 10000 for Gemma 3); 0: the global base.</summary>
    public float GgufRopeThetaSliding { get; init; }

    /// <summary>Phi-3: Q/K/V fused into attn_qkv, gate and up into ffn_up.</summary>
    public bool FusedQkv { get; init; }
    public bool FusedGateUp { get; init; }

    /// <summary>Whether the chosen experts' weights are renormalized when the model does not say (llama.cpp's per-architecture choice).</summary>
    public bool DefaultExpertWeightsNorm { get; init; }

    /// <summary>The family's tensors under both names (the engine's names are the GGUF ones).</summary>
    public IReadOnlyList<TensorSpec> Tensors { get; init; } = DecoderTensors.Llama;
    public ConfigKeys Keys { get; init; } = ConfigKeys.Standard;
    /// <summary>What precedes a per-layer tensor's name in Hugging Face files, before the layer number.</summary>
    public string HfLayerPrefix { get; init; } = "model.layers.";

    private Dictionary<string, TensorSpec>? _byHfGlobal, _byHfLayer, _byGguf;

    private void Index()
    {
        if (_byGguf != null) return;
        _byHfGlobal = Tensors.Where(t => !t.PerLayer && t.Hf != null).ToDictionary(t => t.Hf!);
        // An expert's tensor is found by its name with the expert's number replaced by the mark.
        _byHfLayer = Tensors.Where(t => t.PerLayer && t.Hf != null).ToDictionary(t => t.Hf!);
        _byGguf = Tensors.ToDictionary(t => t.Gguf);
    }

    [GeneratedRegex(@"^blk\.(\d+)\.(.+)$")]
    private static partial Regex GgufLayerName();

    /// <summary>The spec of a GGUF tensor name ("blk.3.attn_q.weight", "output.weight"), or null for one the family lacks.</summary>
    public TensorSpec? FindTensor(string ggufName)
    {
        Index();
        var m = GgufLayerName().Match(ggufName);
        if (m.Success) return _byGguf!.TryGetValue(m.Groups[2].Value, out var s) && s.PerLayer ? s : null;
        return _byGguf!.TryGetValue(ggufName, out var g) && !g.PerLayer ? g : null;
    }

    /// <summary>Hugging Face tensor name → GGUF tensor name; null for tensors the engine does not use (rotary_emb.inv_freq).
    /// One expert's tensor maps to its stack's name (see <see cref="MapHfTensor"/> for the expert's number).</summary>
    public string? GgufTensorName(string hfName) => MapHfTensor(hfName)?.Gguf;

    [GeneratedRegex(@"\.experts\.(\d+)\.")]
    private static partial Regex ExpertNumber();

    /// <summary>
    /// Hugging Face tensor name → the GGUF tensor it is (or is part of), the expert it holds (-1 unless it is one
    /// expert of a stack) and its spec; null for tensors the engine does not use.
    /// </summary>
    public (string Gguf, int Expert, TensorSpec Spec)? MapHfTensor(string hfName)
    {
        Index();
        if (_byHfGlobal!.TryGetValue(hfName, out var g)) return (g.Gguf, -1, g);
        if (!hfName.StartsWith(HfLayerPrefix, StringComparison.Ordinal)) return null;
        var rest = hfName.AsSpan(HfLayerPrefix.Length);
        int dot = rest.IndexOf('.');
        if (dot <= 0 || !int.TryParse(rest[..dot], System.Globalization.NumberStyles.None, null, out int layer)) return null;
        string key = rest[(dot + 1)..].ToString();
        int expert = -1;
        if (ExpertNumber().Match("." + key) is { Success: true } m && int.TryParse(m.Groups[1].ValueSpan, out expert))
            key = ExpertNumber().Replace("." + key, $".experts.{TensorSpec.ExpertMark}.", 1)[1..];
        if (!_byHfLayer!.TryGetValue(key, out var s)) return null;
        return (s.GgufName(layer), s.Experts ? expert : -1, s);
    }

    /// <summary>The GGUF key of a configuration value for this family's files: <c>{arch}.context_length</c>.</summary>
    public string GgufKey(ConfigKey key, string? ggufArchitecture = null) => key.GgufKey(ggufArchitecture ?? GgufNameWritten);

    public override string ToString() => Name;
}
