using FitLM.Runtime;

namespace FitLM.Adaptation;

/// <summary>
/// One change of the memory budget and what the running model did about it: the line `--verbose` prints and
/// `/metrics` counts. <paramref name="Changes"/> are the levers pulled, cheapest first ("stack 180 -> 90 blocks").
/// </summary>
/// <param name="At">Time since the model was loaded.</param>
/// <param name="Note">A warning that goes with it: below the smallest plan, a read error while growing.</param>
public sealed record BudgetAdaptation(TimeSpan At, long OldBudget, long NewBudget, IReadOnlyList<string> Changes, TimeSpan Took,
    long RssBefore, long RssAfter, string? Note = null)
{
    /// <summary>"[  12.34 s] budget 512.0 MiB -> 96.0 MiB: stack 180 -> 90 blocks; kv f16 -> kivi4 | RSS 140.2 -> 88.0 MiB in 35 ms".</summary>
    public override string ToString()
    {
        string what = Changes.Count == 0 ? "nothing to change" : string.Join("; ", Changes);
        string line = $"[{At.TotalSeconds,8:F2} s] budget {ProcessMemory.Format(OldBudget)} -> {ProcessMemory.Format(NewBudget)}: {what} | " +
            $"RSS {ProcessMemory.Format(RssBefore)} -> {ProcessMemory.Format(RssAfter)} in {Took.TotalMilliseconds:F0} ms";
        return Note == null ? line : $"{line} ({Note})";
    }
}
