using System.Diagnostics;
using FitLM.Runtime;

namespace FitLM.Adaptation;

/// <summary>
/// Keeps a running model within a budget that moves (docs/variable-memory.md). Anyone may <see cref="Request"/> a new
/// budget at any time (a memory watcher, <c>LanguageModel.SetBudget</c>, the server's endpoint); only the latest
/// request counts, so budgets that change faster than an adaptation takes are coalesced. The thread that runs the
/// model calls <see cref="Apply"/> between two forward passes, never inside one.
///
/// Falling budget: levers are pulled cheapest first — each one step at a time, then both heaps are trimmed and the
/// fit is checked again — until the process fits. Rising budget: levers grow in the reverse order, each as far as its
/// own accounting allows. A budget below the smallest plan leaves every lever at its minimum and is said once.
/// </summary>
public sealed class MemoryGovernor
{
    /// <summary>The least a growing lever leaves free below a rising budget (or 5% of it, if more), by default.</summary>
    public const long DefaultGrowHeadroomBytes = 8L << 20;
    private readonly long _growHeadroom;

    private readonly List<IMemoryLever> _levers = [];
    private readonly Func<long, bool> _fits;
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly object _applyLock = new();
    private long _requested, _applied;
    private bool _belowSaid, _growWarned;
    private int _count;

    /// <param name="budget">The budget the model was loaded for.</param>
    /// <param name="fits">Whether the process fits a budget now: the measured resident set and the plan's promise.</param>
    /// <param name="growHeadroom">What growing levers leave free below a rising budget, at least (5% of it if more).</param>
    public MemoryGovernor(long budget, Func<long, bool> fits, long growHeadroom = DefaultGrowHeadroomBytes)
    {
        _growHeadroom = growHeadroom;
        _requested = _applied = budget;
        _fits = fits;
    }

    /// <summary>An adaptation changed something, or warned (on the thread that called <see cref="Apply"/>).</summary>
    public event Action<BudgetAdaptation>? Adapted;

    /// <summary>The budget the model is adapted to now.</summary>
    public long Budget => Interlocked.Read(ref _applied);
    /// <summary>The latest budget asked for (equal to <see cref="Budget"/> once applied).</summary>
    public long Requested => Interlocked.Read(ref _requested);
    public bool Pending => Requested != Budget;
    /// <summary>
    /// Whether the GC's hard limit follows the budget (<see cref="HeapTrim.FollowBudget"/>). It is process-wide, so only a
    /// process that is FitLM alone sets it (`fitlm run` and `serve` do); a library call in someone else's application
    /// leaves their GC alone. Off by default.
    /// </summary>
    public bool LimitsGcHeap { get; set; }

    /// <summary>Adaptations since load that changed something or warned.</summary>
    public int Count => Volatile.Read(ref _count);
    /// <summary>The last adaptation, or null.</summary>
    public BudgetAdaptation? Last { get; private set; }

    /// <summary>Adds a lever after those already there (levers are added cheapest first).</summary>
    public void Add(IMemoryLever lever)
    {
        lock (_applyLock) _levers.Add(lever);
    }

    public void Remove(IMemoryLever lever)
    {
        lock (_applyLock) _levers.Remove(lever);
    }

    /// <summary>Asks for a new budget; it takes effect at the next <see cref="Apply"/>.</summary>
    public void Request(long budgetBytes)
    {
        if (budgetBytes <= 0) throw new FitLMException($"a memory budget of {budgetBytes} bytes is out of range");
        Interlocked.Exchange(ref _requested, budgetBytes);
    }

    /// <summary>Adapts to the latest requested budget if it changed; call between forward passes. Returns what was done, or null.</summary>
    public BudgetAdaptation? Apply()
    {
        if (!Pending) return null;
        lock (_applyLock)
        {
            long target = Requested, old = Budget;
            if (target == old) return null;
            long t0 = Stopwatch.GetTimestamp();
            var at = _clock.Elapsed;
            long rssBefore = ProcessMemory.RssBytes();
            var changes = new List<string>();
            string? note = null;
            if (LimitsGcHeap) HeapTrim.FollowBudget(target);
            if (target > old)
            {
                // Reverse order: the most expensive lever was pulled last, so it is the first to come back. Levers grow
                // into the budget less a headroom, so a budget that wobbles (auto follows every process on the machine)
                // does not requantize or re-read at every wobble: the shrink below needs the budget itself.
                long growTo = target - Math.Max(target / 20, _growHeadroom);
                for (int i = _levers.Count - 1; i >= 0; i--)
                {
                    try
                    {
                        if (_levers[i].Grow(growTo) is { } change) changes.Add(change);
                    }
                    catch (Exception e) when (e is FitLMException or IOException)
                    {
                        // A read error while growing: this lever stays where it is, said once.
                        if (!_growWarned) note = $"warning: could not grow: {e.Message}";
                        _growWarned = true;
                    }
                }
            }
            note = Shrink(target, changes) ?? note;
            foreach (var lever in _levers)
                if (lever.Settle(target) is { } settled) changes.Add(settled);
            Interlocked.Exchange(ref _applied, target);
            var a = new BudgetAdaptation(at, old, target, changes, Stopwatch.GetElapsedTime(t0), rssBefore, ProcessMemory.RssBytes(), note);
            // A budget that moved but still fits what the model holds changes nothing: not an adaptation (with
            // --memory auto the budget moves with every other process on the machine).
            if (changes.Count == 0 && note == null) return a;
            Last = a;
            Interlocked.Increment(ref _count);
            Adapted?.Invoke(a);
            return a;
        }
    }

    /// <summary>Pulls levers cheapest first until the process fits; the note when even the smallest plan does not.</summary>
    private string? Shrink(long budget, List<string> changes)
    {
        bool pulled = false;
        foreach (var lever in _levers)
        {
            while (!_fits(budget))
            {
                if (lever.Shrink(budget) is not { } change) break;
                changes.Add(change);
                pulled = true;
                HeapTrim.All();
            }
        }
        if (!pulled) HeapTrim.All();
        if (_fits(budget))
        {
            _belowSaid = false;
            return null;
        }
        // Every lever at its minimum: keep running there, and say so once until a budget fits again.
        if (_belowSaid) return null;
        _belowSaid = true;
        return $"below the smallest plan: running at the smallest, which holds {ProcessMemory.Format(ProcessMemory.RssBytes())}";
    }
}
