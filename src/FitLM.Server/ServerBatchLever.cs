using FitLM.Adaptation;
using FitLM.Runtime;

namespace FitLM.Server;

/// <summary>
/// The server's batch, the last lever (docs/variable-memory.md): when the model itself can give no more, the KV pool
/// that admission reserves from shrinks to what the budget leaves. Running requests keep their memory and finish;
/// new ones wait in the queue (never fail) until enough is released or the budget comes back.
/// </summary>
internal sealed class ServerBatchLever(KvBudget budget, Scheduler scheduler) : IMemoryLever
{
    public string? Shrink(long bytes) => Resize(bytes, shrink: true);

    public string? Grow(long bytes) => Resize(bytes, shrink: false);

    private string? Resize(long bytes, bool shrink)
    {
        long before = budget.CapacityBytes, after = budget.CapacityFor(bytes);
        if (shrink ? after >= before : after <= before) return null;
        budget.Resize(bytes);
        if (!shrink) scheduler.Wake(); // queued requests may fit now
        return $"server KV pool {ProcessMemory.Format(before)} -> {ProcessMemory.Format(after)} " +
            (shrink ? $"({scheduler.ActiveCount} running keep theirs, new requests queue)" : "");
    }
}
