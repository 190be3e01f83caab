namespace FitLM.Training;

/// <summary>
/// What a run reports after each step: the step (1-based) of how many, its loss (before the update), the latest
/// evaluation (NaN until one ran; <see cref="Evaluated"/> when it ran after this step), speed, peak memory and time left.
/// </summary>
public readonly record struct FinetuneProgress(
    long Step,
    long TotalSteps,
    double Loss,
    double EvalLoss,
    bool Evaluated,
    double TokensPerSecond,
    long PeakMemoryBytes,
    TimeSpan Remaining)
{
    public double EvalPerplexity => Math.Exp(EvalLoss);
}

/// <summary>How a run ended and where its files are.</summary>
public sealed record FinetuneResult
{
    /// <summary>Steps done (of <see cref="TotalSteps"/>); fewer when cancelled.</summary>
    public required long StepsDone { get; init; }
    public required long TotalSteps { get; init; }
    /// <summary>Cancelled: a checkpoint of step <see cref="StepsDone"/> was written and the adapter files were not.</summary>
    public required bool Cancelled { get; init; }
    public required string OutputDir { get; init; }
    /// <summary>The checkpoint folder (OUT_DIR/checkpoint).</summary>
    public required string CheckpointDir { get; init; }
    /// <summary>OUT_DIR/adapter.gguf when the run completed, else null.</summary>
    public string? AdapterGguf { get; init; }
    /// <summary>OUT_DIR/model.gguf when a --mezo-full run completed (the trained model), else null.</summary>
    public string? ModelGguf { get; init; }
    public required IReadOnlyList<TrainingLogEntry> History { get; init; }
    /// <summary>The last evaluation's loss (NaN: none ran).</summary>
    public double EvalLoss { get; init; } = double.NaN;
    public double EvalPerplexity => Math.Exp(EvalLoss);
    public double TokensPerSecond { get; init; }
    /// <summary>Tokens per second of the training steps alone (no evaluation or checkpoints), after the first step; NaN with one step.</summary>
    public double StepTokensPerSecond { get; init; } = double.NaN;
}
