using FitLM.Memory;
using FitLM.Runtime;
using FitLM.Weights;

namespace FitLM.Adaptation;

/// <summary>
/// BitStack (docs/bitstack.md): the cheapest lever. Dropping blocks frees their memory at once and costs no time;
/// growing reads only the blocks added. Sized by <see cref="StackPlanner.EntriesForBudget"/>: what fits beside what
/// the process holds now. Never below the smallest whole model (one block per matrix).
/// </summary>
public sealed class StackLever(StackedWeights weights) : IMemoryLever
{
    public string? Shrink(long budget)
    {
        var layout = weights.Layout!;
        int k = Math.Max(layout.BaseEntries, StackPlanner.EntriesForBudget(weights, budget, out _));
        return k < weights.LoadedEntries ? Resize(k) : null;
    }

    public string? Grow(long budget)
    {
        int k = StackPlanner.EntriesForBudget(weights, budget, out _);
        return k > weights.LoadedEntries ? Resize(k) : null;
    }

    private string Resize(int entries)
    {
        int from = weights.LoadedEntries;
        long before = weights.WeightBytes;
        try
        {
            weights.ResizeEntries(entries);
        }
        catch (Exception e) when (e is FitLMException or IOException)
        {
            // A read error part way: matrices already grown drop back, so the model stays at the size it had.
            weights.SetCounts(weights.Layout!.CountsAt(from));
            throw;
        }
        return $"stack {from} -> {entries} blocks (weights {ProcessMemory.Format(before)} -> {ProcessMemory.Format(weights.WeightBytes)})";
    }
}
