namespace FitLM.Training;

/// <summary>
/// Token sequences trained side by side: their ids one after another, where each starts, and the next-token
/// targets (position t of a sequence predicts position t + 1; a sequence's last position has no target, −1).
/// </summary>
public sealed class TrainingBatch
{
    public int[] Tokens { get; }
    public int[] Targets { get; }
    public (int Start, int Length)[] Sequences { get; }
    /// <summary>Rows with a target: the denominator of the mean loss.</summary>
    public int TargetCount { get; }

    public TrainingBatch(IReadOnlyList<int[]> sequences)
    {
        ArgumentNullException.ThrowIfNull(sequences);
        if (sequences.Count == 0) throw new FitLMException("a training batch needs at least one sequence");
        int n = sequences.Sum(s => s.Length);
        Tokens = new int[n];
        Targets = new int[n];
        Sequences = new (int, int)[sequences.Count];
        int row = 0;
        for (int s = 0; s < sequences.Count; s++)
        {
            var seq = sequences[s];
            if (seq.Length < 2) throw new FitLMException($"training sequence {s} has {seq.Length} token(s); it needs at least 2 (a token and the next to predict)");
            Sequences[s] = (row, seq.Length);
            seq.CopyTo(Tokens, row);
            for (int t = 0; t < seq.Length; t++) Targets[row + t] = t + 1 < seq.Length ? seq[t + 1] : -1;
            row += seq.Length;
        }
        TargetCount = n - sequences.Count;
    }

    public int Count => Tokens.Length;
}
