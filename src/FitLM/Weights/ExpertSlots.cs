namespace FitLM.Weights;

/// <summary>
/// Which expert of one layer each slot of the expert cache holds, and which one goes when a slot is needed: the
/// bookkeeping and the eviction policy, with no bytes and no I/O (so a scripted sequence of uses tests a policy).
/// Everything runs on the compute thread.
///
/// Victims are never pinned (the current batch's experts) and empty slots go first. Then, by policy:
/// <list type="bullet">
/// <item>Lru: the expert used least recently.</item>
/// <item>Frequency: the expert used by the fewest batches over the whole run (counted whether it was held or not), ties to the least recently used.</item>
/// <item>Predict: an expert not predicted for the coming batch before a predicted one, then the least often used, then
/// the least recently used (the part of the cache that prediction does not fill keeps the popular experts: on
/// pycoder-moe, 82.6% hits against 80.4% with recency, bench/moe-cache.sh).</item>
/// <item>PredictLru: an expert not predicted before a predicted one, then the least recently used.</item>
/// <item>None: any (the cache forgets everything before each batch).</item>
/// </list>
/// A read ahead (<see cref="Place"/> with prefetch) never evicts a predicted expert. (Keeping half the slots as an LRU
/// part that a read ahead may not evict was tried for PredictLru, margin 1: 75.7% hits against 82.9% without, over 6000
/// tokens; so prediction may use every slot.)
/// </summary>
public sealed class ExpertSlots
{
    private readonly int[] _slotExpert;
    private readonly int[] _expertSlot;
    private readonly long[] _lastUse;
    private readonly long[] _uses;
    private readonly bool[] _predicted;
    private readonly long[] _pinnedIn;
    private long _batch;

    public ExpertPolicy Policy { get; }
    public int Capacity => _slotExpert.Length;
    public int ExpertCount => _expertSlot.Length;

    public ExpertSlots(int experts, int slots, ExpertPolicy policy)
    {
        if (experts < 1 || slots < 1) throw new ArgumentOutOfRangeException(nameof(slots), $"{slots} slots for {experts} experts");
        Policy = policy;
        _slotExpert = new int[slots];
        _expertSlot = new int[experts];
        _lastUse = new long[experts];
        _uses = new long[experts];
        _predicted = new bool[experts];
        _pinnedIn = new long[slots];
        Array.Fill(_slotExpert, -1);
        Array.Fill(_expertSlot, -1);
        Array.Fill(_lastUse, -1);
        Array.Fill(_pinnedIn, -1);
    }

    /// <summary>The slot holding <paramref name="expert"/>, or -1.</summary>
    public int SlotOf(int expert) => _expertSlot[expert];
    /// <summary>The expert slot <paramref name="slot"/> holds, or -1.</summary>
    public int ExpertIn(int slot) => _slotExpert[slot];
    public long Uses(int expert) => _uses[expert];
    public bool IsPredicted(int expert) => _predicted[expert];
    public bool IsPinned(int slot) => _pinnedIn[slot] == _batch;

    /// <summary>A new batch: nothing pinned; the clock that orders recent use moves on.</summary>
    public void BeginBatch() => _batch++;

    /// <summary>
    /// Unpins the batch's experts without counting a use (the layer is not running: a read ahead for it may evict any of
    /// them, or a batch that needs more experts than slots moves on to its next group).
    /// </summary>
    public void ReleasePins() => _batch++;

    /// <summary>Keeps <paramref name="slot"/>'s expert until the batch ends.</summary>
    public void Pin(int slot) => _pinnedIn[slot] = _batch;

    /// <summary>The batch ran <paramref name="expert"/>: most recently used, one more use.</summary>
    public void Touch(int expert)
    {
        _lastUse[expert] = _batch;
        _uses[expert]++;
    }

    /// <summary>Marks <paramref name="expert"/> predicted for the coming batch (until <see cref="ClearPredicted"/>).</summary>
    public void Predict(int expert) => _predicted[expert] = true;

    public void ClearPredicted() => Array.Clear(_predicted);

    /// <summary>
    /// A slot for <paramref name="expert"/> (not held): the victim's expert is forgotten and the slot now names
    /// <paramref name="expert"/> (the caller reads its bytes). Returns -1 when no slot may be taken: all pinned, or for a
    /// read ahead, all protected.
    /// </summary>
    public int Place(int expert, bool prefetch)
    {
        if (_expertSlot[expert] >= 0) throw new InvalidOperationException($"expert {expert} is already held");
        int slot = Victim(prefetch);
        if (slot < 0) return -1;
        Forget(slot);
        _slotExpert[slot] = expert;
        _expertSlot[expert] = slot;
        return slot;
    }

    /// <summary>Empties <paramref name="slot"/> (its read failed, or the naive policy keeps nothing between batches).</summary>
    public void Forget(int slot)
    {
        int old = _slotExpert[slot];
        if (old >= 0) _expertSlot[old] = -1;
        _slotExpert[slot] = -1;
        _pinnedIn[slot] = -1; // an empty slot has nothing to keep
    }

    private int Victim(bool prefetch)
    {
        int best = -1;
        for (int s = 0; s < Capacity; s++)
        {
            if (IsPinned(s)) continue;
            int e = _slotExpert[s];
            if (e < 0) return s;
            if (prefetch && _predicted[e]) continue;
            if (best < 0 || Before(e, _slotExpert[best])) best = s;
        }
        return best;
    }

    /// <summary>Whether <paramref name="a"/> should go before <paramref name="b"/>.</summary>
    private bool Before(int a, int b)
    {
        switch (Policy)
        {
            case ExpertPolicy.Predict or ExpertPolicy.PredictLru when _predicted[a] != _predicted[b]:
                return !_predicted[a];
            case ExpertPolicy.Frequency or ExpertPolicy.Predict when _uses[a] != _uses[b]:
                return _uses[a] < _uses[b];
        }
        return _lastUse[a] < _lastUse[b] || (_lastUse[a] == _lastUse[b] && a < b);
    }
}
