namespace FitLM.Adaptation;

/// <summary>
/// One way a running model can give memory back and take it again: BitStack blocks, the KV cache's type, which
/// layers are resident, the server's batch. The <see cref="MemoryGovernor"/> pulls levers cheapest first when the
/// budget falls and in the reverse order when it rises, always between two forward passes.
/// </summary>
public interface IMemoryLever
{
    /// <summary>
    /// Gives back memory toward <paramref name="budget"/> (bytes for the whole process): one step, the largest this lever
    /// judges useful. Returns what changed ("kv f16 -> kivi4"), or null when it has nothing more to give.
    /// </summary>
    string? Shrink(long budget);

    /// <summary>Takes back what <paramref name="budget"/> now allows, by this lever's own accounting; what changed, or null.</summary>
    /// <exception cref="FitLMException">Growing failed (a read error); the lever stays at its current size.</exception>
    string? Grow(long budget);

    /// <summary>
    /// Called once every lever has moved, for a lever whose size follows the others' (the server's KV pool is what the
    /// budget leaves beside the model as it now is); what changed, or null. Most levers have nothing to settle.
    /// </summary>
    string? Settle(long budget) => null;
}
