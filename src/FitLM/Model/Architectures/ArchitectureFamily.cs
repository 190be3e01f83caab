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

    /// <summary>Hugging Face tensor name → GGUF tensor name; null for tensors the engine does not use (rotary_emb.inv_freq).</summary>
    public string? GgufTensorName(string hfName)
    {
        Index();
        if (_byHfGlobal!.TryGetValue(hfName, out var g)) return g.Gguf;
        if (!hfName.StartsWith(HfLayerPrefix, StringComparison.Ordinal)) return null;
        var rest = hfName.AsSpan(HfLayerPrefix.Length);
        int dot = rest.IndexOf('.');
        if (dot <= 0 || !int.TryParse(rest[..dot], System.Globalization.NumberStyles.None, null, out int layer)) return null;
        return _byHfLayer!.TryGetValue(rest[(dot + 1)..].ToString(), out var s) ? s.GgufName(layer) : null;
    }

    /// <summary>The GGUF key of a configuration value for this family's files: <c>{arch}.context_length</c>.</summary>
    public string GgufKey(ConfigKey key, string? ggufArchitecture = null) => key.GgufKey(ggufArchitecture ?? GgufNameWritten);

    public override string ToString() => Name;
}
