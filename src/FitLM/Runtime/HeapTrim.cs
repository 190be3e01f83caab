using System.Runtime.InteropServices;

namespace FitLM.Runtime;

/// <summary>
/// Hands freed memory back to the system so the resident set actually falls: the C heap's free pages
/// (<c>malloc_trim</c>: weights, blocks and KV slabs are native allocations) and the .NET heap's (a compacting
/// collection that decommits what it freed), and tells the GC the process's budget so its own heuristics follow it.
/// </summary>
public static class HeapTrim
{
    /// <summary>Asks the C library to give freed heap pages back to the OS.</summary>
    public static void Native()
    {
        if (!OperatingSystem.IsLinux()) return;
        try { _ = MallocTrim(0); } // 1 when memory was released, 0 when none could be: either is fine here
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
    }

    /// <summary>
    /// Native and managed: after a shrink, both heaps return what they freed. A blocking, compacting gen-2 collection of
    /// a heap of a few MiB takes about a millisecond; it runs only when the budget moved, never per token.
    /// </summary>
    public static void All()
    {
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        Native();
    }

    /// <summary>
    /// Makes the GC's memory limit follow the process's budget (<c>GCHeapHardLimit</c>, re-read by
    /// <see cref="GC.RefreshMemoryLimit"/>): its collections grow more eager as the managed heap nears the limit. The
    /// managed heap is a small part of the process (weights, KV pages and activations are native), and a hard limit is
    /// a cap whose breach is an OutOfMemoryException, so the limit is never below what the heap has committed plus
    /// <see cref="ManagedSlackBytes"/>: a budget the process cannot meet makes it run over (and say so), not crash.
    /// A limit the runtime refuses leaves the old one (returns false).
    /// </summary>
    public static bool FollowBudget(long budgetBytes)
    {
        if (budgetBytes <= 0) return false;
        long limit = Math.Max(budgetBytes, GC.GetGCMemoryInfo().TotalCommittedBytes + ManagedSlackBytes);
        try
        {
            AppContext.SetData("GCHeapHardLimit", (ulong)limit);
            GC.RefreshMemoryLimit();
            return true;
        }
        catch (InvalidOperationException)
        {
            return false;
        }
    }

    /// <summary>Room the managed heap keeps above what it has committed, whatever the budget (see <see cref="FollowBudget"/>).</summary>
    public const long ManagedSlackBytes = 64L << 20;

    [DllImport("libc", EntryPoint = "malloc_trim")]
    private static extern int MallocTrim(nuint pad);
}
