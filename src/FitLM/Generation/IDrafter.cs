namespace FitLM.Generation;

/// <summary>
/// Proposes the next tokens of a sequence for speculative decoding (<see cref="SpeculativeGenerator"/>): the target
/// model then checks them all in one forward pass. A drafter is deterministic — it proposes its single most likely
/// continuation — so verification needs only the target's own choice at each position (see the generator).
/// </summary>
public interface IDrafter : IDisposable
{
    /// <summary>Short name for statistics ("lookup", "draft").</summary>
    string Name { get; }

    /// <summary>
    /// Writes up to <paramref name="draft"/>.Length proposed tokens that follow <paramref name="history"/> (the prompt
    /// and every accepted token) and returns how many; 0: nothing worth verifying, the caller decodes one token plainly.
    /// Called once per verification step with the whole history, so a drafter may keep state between calls (a KV
    /// cache) and must reconcile it with the history it is given: its earlier drafts may have been rejected.
    /// </summary>
    int Draft(ReadOnlySpan<int> history, Span<int> draft, CancellationToken ct);
}
