namespace FitLM.Model.Architectures;

/// <summary>The architecture families this engine runs, looked up by any of their names.</summary>
public static class ArchitectureRegistry
{
    /// <summary>Every registered family. A new family is one file beside this one and one line here.</summary>
    public static IReadOnlyList<ArchitectureFamily> All { get; } =
    [
        LlamaFamily.Description,
        MistralFamily.Description,
        Qwen2Family.Description,
        Qwen3Family.Description,
        Phi3Family.Description,
        Gemma2Family.Description,
        Gemma3Family.Description,
        MixtralFamily.Description,
        Qwen2MoeFamily.Description,
        Qwen3MoeFamily.Description,
        OlmoeFamily.Description,
    ];

    /// <summary>The supported families' names, for messages: "llama, mistral, qwen2, qwen3".</summary>
    public static string SupportedNames => string.Join(", ", All.Select(f => f.Name));

    /// <summary>The family of this engine name (<see cref="ModelConfig.Architecture"/>), or null.</summary>
    public static ArchitectureFamily? Find(string name) => All.FirstOrDefault(f => f.Name == name);

    /// <summary>The family of a GGUF general.architecture value, or null.</summary>
    public static ArchitectureFamily? FindGguf(string ggufArchitecture) => All.FirstOrDefault(f => f.GgufNames.Contains(ggufArchitecture));

    /// <summary>The family of a config.json: by "architectures" first (as llama.cpp's converter), else by "model_type"; or null.</summary>
    public static ArchitectureFamily? FindHuggingFace(IReadOnlyList<string> architectures, string? modelType) =>
        All.FirstOrDefault(f => architectures.Any(a => f.HfArchitectures.Contains(a)))
        ?? (modelType == null ? null : All.FirstOrDefault(f => f.HfModelTypes.Contains(modelType)));

    /// <summary>The one-line error for an architecture no family describes.</summary>
    public static FitLMException Unsupported(string path, string architecture) =>
        new($"{path}: unsupported architecture '{architecture}' (supported: {SupportedNames})");

    public static ArchitectureFamily Get(string name, string path) => Find(name) ?? throw Unsupported(path, name);

    public static ArchitectureFamily GetGguf(string ggufArchitecture, string path) =>
        FindGguf(ggufArchitecture) ?? throw Unsupported(path, ggufArchitecture);

    /// <summary>The family of a config.json; an unknown one is named by its model_type (else its first architectures entry).</summary>
    public static ArchitectureFamily GetHuggingFace(IReadOnlyList<string> architectures, string? modelType, string path) =>
        FindHuggingFace(architectures, modelType)
        ?? throw Unsupported(path, !string.IsNullOrEmpty(modelType) ? modelType : (architectures.Count > 0 ? architectures[0] : null) ?? "(none: config.json has no model_type)");
}
