namespace FitLM.Generation;

/// <summary>
/// Prompt lookup (n-gram) drafting, llama.cpp's `llama-lookup` without its corpus cache: the last
/// <see cref="NgramSize"/> tokens of the history are searched for earlier in it, latest occurrence first, and the
/// tokens that followed that occurrence are the draft. No second model: it pays off where the output copies its
/// input — code edits, quoting, summaries with names — and costs a one-token search when it does not.
/// <para>
/// When the full n-gram never occurred before, shorter ones down to <see cref="MinNgram"/> are tried (a longer
/// match predicts better, a shorter one matches more often); below that nothing is drafted and the step decodes
/// one token plainly. The search scans the history backwards, O(history) per step with no allocation: for a
/// 4096-token context that is ~4k int comparisons, microseconds next to a forward pass.
/// </para>
/// </summary>
public sealed class LookupDrafter : IDrafter
{
    /// <summary>Length of the suffix searched for first.</summary>
    public int NgramSize { get; }
    /// <summary>The shortest suffix tried when longer ones never occurred before.</summary>
    public int MinNgram { get; }

    public LookupDrafter(int ngramSize, int minNgram = 0)
    {
        if (ngramSize is < 1 or > 64) throw new FitLMException($"--lookup {ngramSize} is out of range (1..64: the n-gram length matched)");
        NgramSize = ngramSize;
        MinNgram = minNgram > 0 ? Math.Min(minNgram, ngramSize) : Math.Min(2, ngramSize);
    }

    public string Name => "lookup";

    public int Draft(ReadOnlySpan<int> history, Span<int> draft, CancellationToken ct)
    {
        for (int n = Math.Min(NgramSize, history.Length - 1); n >= MinNgram; n--)
        {
            int found = LatestEarlier(history, n);
            if (found < 0) continue;
            // The match ends at found + n and what followed it is the draft: the history seen as repeating itself
            // with period d = Length - (found + n). Past the history's end the copy continues from the draft
            // itself, so a loop (greedy decoding's usual failure) is drafted in full, not cut at one period.
            int from = found + n, d = history.Length - from;
            for (int j = 0; j < draft.Length; j++) draft[j] = j < d ? history[from + j] : draft[j - d];
            return draft.Length;
        }
        return 0;
    }

    /// <summary>Start of the latest occurrence of the history's last n tokens that ends before the history does, or -1.</summary>
    private static int LatestEarlier(ReadOnlySpan<int> history, int n)
    {
        var suffix = history[^n..];
        // Candidates end at most one token before the end, so at least one token follows them.
        for (int start = history.Length - n - 1; start >= 0; start--)
            if (history[start] == suffix[0] && history.Slice(start, n).SequenceEqual(suffix)) return start;
        return -1;
    }

    public void Dispose() { }
}
