using FitLM.Weights;
using Xunit;

namespace FitLM.Tests.Weights;

/// <summary>Each expert policy's eviction on scripted sequences of batches (no bytes, no I/O: the bookkeeping alone).</summary>
public sealed class ExpertSlotsTests
{
    /// <summary>Runs one batch as the layer cache does: counts a use of each expert, pins those held, places the others. Returns the misses.</summary>
    private static List<int> Batch(ExpertSlots slots, params int[] experts)
    {
        slots.BeginBatch();
        foreach (int e in experts) slots.Touch(e);
        foreach (int e in experts)
            if (slots.SlotOf(e) >= 0) slots.Pin(slots.SlotOf(e));
        var misses = new List<int>();
        foreach (int e in experts)
        {
            if (slots.SlotOf(e) >= 0) continue;
            int s = slots.Place(e, prefetch: false);
            Assert.True(s >= 0, $"no slot for expert {e}");
            slots.Pin(s);
            misses.Add(e);
        }
        return misses;
    }

    private static int[] Held(ExpertSlots slots) =>
        Enumerable.Range(0, slots.Capacity).Select(slots.ExpertIn).Where(e => e >= 0).Order().ToArray();

    [Fact]
    public void Lru_evicts_the_least_recently_used()
    {
        var s = new ExpertSlots(8, 3, ExpertPolicy.Lru);
        Assert.Equal([0, 1, 2], Batch(s, 0, 1, 2));
        Assert.Empty(Batch(s, 0));                 // 0 is now the most recent; 1 the least
        Assert.Equal([3], Batch(s, 3));            // evicts 1
        Assert.Equal([0, 2, 3], Held(s));
        Assert.Equal([1], Batch(s, 1));            // evicts 2 (used before 0 and 3)
        Assert.Equal([0, 1, 3], Held(s));
    }

    [Fact]
    public void Frequency_evicts_the_least_often_used_then_the_least_recent()
    {
        var s = new ExpertSlots(8, 3, ExpertPolicy.Frequency);
        Batch(s, 0, 1, 2);
        Batch(s, 0);
        Batch(s, 0);
        Batch(s, 2);                               // uses: 0×3, 1×1, 2×2
        Assert.Equal([3], Batch(s, 3));            // evicts 1, the least used
        Assert.Equal([0, 2, 3], Held(s));
        Assert.Equal([4], Batch(s, 4));            // 3 has the fewest uses
        Assert.Equal([0, 2, 4], Held(s));
        // Counts run over the whole run, held or not: 1 (2 uses now) outlasts 4 (1 use).
        Assert.Equal([1], Batch(s, 1));
        Assert.Equal([0, 1, 2], Held(s));
    }

    [Fact]
    public void Predict_keeps_predicted_experts_then_the_most_used()
    {
        var s = new ExpertSlots(8, 3, ExpertPolicy.Predict);
        Batch(s, 0, 1, 2);
        Batch(s, 1);
        Batch(s, 1);                               // uses: 0×1, 1×3, 2×1; 2 is more recent than 0 only by number
        s.Predict(0);
        Assert.Equal([5], Batch(s, 5));            // 0 predicted, 1 most used: 2 goes
        Assert.Equal([0, 1, 5], Held(s));
        s.ClearPredicted();
        Assert.Equal([6], Batch(s, 6));            // nothing predicted: 0 and 5 have one use each, 0 is older
        Assert.Equal([1, 5, 6], Held(s));
    }

    [Fact]
    public void PredictLru_keeps_predicted_experts_then_the_most_recent()
    {
        var s = new ExpertSlots(8, 3, ExpertPolicy.PredictLru);
        Batch(s, 0, 1, 2);
        Batch(s, 1);
        Batch(s, 1);
        Batch(s, 2);                               // recency: 2, 1, 0
        s.Predict(0);
        Assert.Equal([5], Batch(s, 5));            // 0 predicted: 1 (least recent of the rest) goes, however often it was used
        Assert.Equal([0, 2, 5], Held(s));
    }

    [Fact]
    public void A_read_ahead_never_evicts_a_predicted_or_pinned_expert()
    {
        var s = new ExpertSlots(8, 2, ExpertPolicy.Predict);
        Batch(s, 0, 1);                            // both pinned by the running batch
        s.Predict(2);
        Assert.Equal(-1, s.Place(2, prefetch: true));
        s.ReleasePins();                           // the layer is not running: its experts may go
        s.Predict(3);
        Assert.True(s.Place(2, prefetch: true) >= 0);
        Assert.True(s.Place(3, prefetch: true) >= 0);
        Assert.Equal([2, 3], Held(s));
        s.Predict(4);
        Assert.Equal(-1, s.Place(4, prefetch: true)); // every slot holds a predicted expert
    }

    [Fact]
    public void Pinned_experts_are_never_evicted()
    {
        var s = new ExpertSlots(8, 2, ExpertPolicy.Lru);
        Batch(s, 0, 1);
        Assert.Equal(-1, s.Place(2, prefetch: false));
        s.Forget(s.SlotOf(0));
        Assert.Equal(-1, s.SlotOf(0));
        Assert.True(s.Place(2, prefetch: false) >= 0); // the emptied slot, though 1 is pinned
    }
}
