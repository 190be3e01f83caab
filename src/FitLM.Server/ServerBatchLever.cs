using FitLM.Adaptation;
using FitLM.Runtime;

namespace FitLM.Server;

/// <summary>
/// The server's batch, the last lever (docs/variable-memory.md): when the model itself can give no more, the KV pool
/// that admission reserves from shrinks to what the budget leaves. Running requests keep their memory and finish;
/// new ones wait in the queue (never fail) until enough is released or the budget comes back. When the budget
/// rises the pool follows the model (<see cref="Settle"/>): it is what the budget leaves beside the model as it is
/// once the other levers have grown (the KV type back up changes what a sequence needs).
/// </summary>
internal sealed class ServerBatchLever(KvBudget budget, Scheduler scheduler) : IMemoryLever
{
    public string? Shrink(long bytes)
    {
        long before = budget.CapacityBytes, after = budget.CapacityFor(bytes);
        if (after >= before) return null;
        budget.Resize(bytes);
        return $"server KV pool {ProcessMemory.Format(before)} -> {ProcessMemory.Format(after)} ({scheduler.ActiveCount} running keep theirs, new requests queue)";
    }

    public string? Grow(long bytes) => null;

    public string? Settle(long bytes)
    {
        long before = budget.CapacityBytes, after = budget.CapacityFor(bytes);
        if (after == before) return null;
        budget.Resize(bytes);
        scheduler.Wake(); // queued requests may fit now
        return $"server KV pool {ProcessMemory.Format(before)} -> {ProcessMemory.Format(after)}";
    }
}
