using FitLM.Model;

namespace FitLM.Weights;

/// <summary>Where a weight tensor lives while the model runs (the planner decides, the providers carry it out).</summary>
public enum Placement
{
    /// <summary>Read once at load, kept in memory in the stored format.</summary>
    Resident,
    /// <summary>Read from storage each time it is used, into a reusable buffer.</summary>
    Streamed,
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
