using FitLM.Model;

namespace FitLM.Weights;

/// <summary>Where a weight tensor lives while the model runs (the planner decides, the providers carry it out).</summary>
public enum Placement
{
    /// <summary>Read once at load, kept in memory in the stored format.</summary>
    Resident,
    /// <summary>Read from storage each time it is used, into a reusable buffer.</summary>
    Streamed,
    /// <summary>A stack of routed experts held in the expert cache: an expert is read from storage when the router picks one the cache lacks (docs/moe.md).</summary>
    Experts,
}

/// <summary>
/// Which experts the expert cache keeps and reads ahead (docs/moe.md). Routing never depends on it: the experts
/// that run are always the router's, so the output is the same under every policy.
/// </summary>
public enum ExpertPolicy
{
    /// <summary>Least recently used expert out.</summary>
    Lru,
    /// <summary>Least often used expert out (counts over the whole run).</summary>
    Frequency,
    /// <summary>The next layer's router applied to the current layer's input chooses experts to read ahead; evicts the least recently used that is not predicted.</summary>
    Predict,
    /// <summary>Prediction, and LRU for what it misses: <see cref="Predict"/> with the cache split between predicted and recently used experts.</summary>
    PredictLru,
    /// <summary>The naive baseline: no cache; every routed expert is read every time it runs.</summary>
    None,
}

/// <summary>How streamed weights are read.</summary>
public enum StreamMode
{
    /// <summary>Layer by layer with the next layer read while the current one computes, several reads in flight.</summary>
    Prefetch,
    /// <summary>The naive baseline: every streamed tensor read when it is needed, one read at a time, nothing overlapped.</summary>
    Naive,
}

/// <summary>One tensor's place in the plan. Layer is -1 for tensors outside the blocks.</summary>
public sealed record TensorPlan(TensorDesc Tensor, Placement Placement, int Layer);
