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

    // Memory budget and weight streaming (the planner).
    /// <summary>Bytes the whole process may hold; 0 = what the machine (or its cgroup) has free.</summary>
    public long MemoryBudget { get; init; }
    /// <summary>How streamed weights are read; Naive also streams every weight, whatever the budget.</summary>
    public Memory.StreamMode Stream { get; init; } = Memory.StreamMode.Prefetch;
    /// <summary>Whether the user chose <see cref="Stream"/>; if not, a plan priced by a storage probe takes the mode its cost model predicts faster.</summary>
    public bool StreamChosen { get; init; }
    /// <summary>Prepared models: fraction of FFN neurons fetched per token, chosen at random (0 = all neurons).</summary>
    public double FfnFraction { get; init; }
    /// <summary>Prepared models: choose the fraction at random even when calibrated predictors exist (I/O measurements).</summary>
    public bool RandomNeurons { get; init; }
    /// <summary>Prepared models: neurons used by the previous this-many tokens stay cached (LLM in a flash windowing; 0: none).</summary>
    public int FfnWindow { get; init; } = 4;
    /// <summary>Prepared models: the neuron predictor file; null = MODEL.predictor.gguf beside the model, if there.</summary>
    public string? PredictorPath { get; init; }
    /// <summary>Prepared models: also compute every neuron's true activation to measure the selector's recall (slow).</summary>
    public bool FfnAudit { get; init; }
    /// <summary>What the process holds besides this model (runtime, other models); measured at load when 0.</summary>
    public long RuntimeBytes { get; init; }
    /// <summary>Rows of logits the caller keeps at once (perplexity keeps half a chunk), for the accounting.</summary>
    public int LogitRows { get; init; } = 1;
    /// <summary>BitStack: how a stacked file is loaded (--weights, matrix cache); null = defaults (docs/bitstack.md).</summary>
    public Compression.StackLoadOptions? Stack { get; init; }

    // KV cache (docs/kv-cache.md).
    /// <summary>How keys and values are held: type (f32, f16, kivi2/4, xquant4/3/2, xquant-cl) and H2O eviction.</summary>
    public KvCache.KvCacheOptions Kv { get; init; } = new();
}
