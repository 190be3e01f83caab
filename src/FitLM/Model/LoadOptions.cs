namespace FitLM.Model;

/// <summary>
/// How to load a model: context, batch, and (as the planner grows) memory budget, weight streaming and KV
/// cache choices. One record so every command and the server pass the same settings the same way.
/// </summary>
public sealed record LoadOptions
{
    /// <summary>Context length in tokens; 0 = the model's trained context, capped at 4096.</summary>
    public int ContextLength { get; init; }
    /// <summary>Most tokens one forward pass processes at once (prefill batch).</summary>
    public int MaxBatch { get; init; } = 256;
}
