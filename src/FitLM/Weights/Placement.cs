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
    /// <summary>
    /// The next layer's router applied to the current layer's FFN input picks experts (its top k plus a margin) to read
    /// ahead while this layer computes; eviction keeps predicted experts, then the most often used, then the most
    /// recently used. With it the cache bytes are shared unevenly: the first layer, which nothing predicts, gets more
    /// slots (pycoder-moe: 14 for layer 0, 6 for the others at 8 a layer on average). Measured best: 85.5% hits at 25%
    /// of the expert bytes on pycoder-moe (bench/moe-cache.sh).
    /// </summary>
    Predict,
    /// <summary>As <see cref="Predict"/>, but evicting the least recently used of the experts not predicted.</summary>
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
