using FitLM.Model;

namespace FitLM.Generation;

/// <summary>Why generation stopped.</summary>
public enum StopReason { Length, EndOfGeneration, StopString, ContextFull }

/// <summary>One generated token and the text it completes (may be empty while a UTF-8 character is split across tokens); Id -1: text released at the end.</summary>
public readonly record struct GeneratedToken(int Id, string Text);

/// <summary>
/// Autoregressive generation of one sequence: prefill the prompt in batches, then decode one token at a time;
/// sampling and stopping (EOS/EOT, stop strings, the token limit, the end of the context) are the
/// <see cref="TokenStream"/>'s, the same loop the server runs for each of its batched requests.
/// </summary>
public sealed class Generator
{
    private readonly LanguageModel _model;

    public Generator(LanguageModel model) => _model = model;

    public StopReason LastStopReason { get; private set; }

    /// <summary>Time of the last call's prompt forward pass alone (what llama.cpp prints as "prompt eval time").</summary>
    public TimeSpan LastPromptEvalTime { get; private set; }

    /// <param name="cachedPrefix">Leading prompt tokens the KV cache already holds from the previous call on this model
    /// (a chat's earlier turns): only the rest is prefilled. The caller guarantees they are the same tokens.</param>
    public IEnumerable<GeneratedToken> Generate(IReadOnlyList<int> prompt, int maxTokens, SamplingOptions options,
        IReadOnlyList<string>? stop = null, int cachedPrefix = 0, CancellationToken ct = default)
    {
        var tf = _model.Transformer;
        if (prompt.Count == 0) throw new FitLMException("the prompt is empty (no tokens)");
        if (prompt.Count >= tf.MaxContext)
            throw new FitLMException($"the prompt has {prompt.Count} tokens; the context holds {tf.MaxContext} (raise -c)");
        return Run(prompt, Math.Max(0, maxTokens), options, stop, Math.Clamp(Math.Min(cachedPrefix, tf.CachedPositions), 0, prompt.Count - 1), ct);
    }

    private IEnumerable<GeneratedToken> Run(IReadOnlyList<int> prompt, int maxTokens, SamplingOptions options, IReadOnlyList<string>? stop, int from, CancellationToken ct)
    {
        var tf = _model.Transformer;
        var stream = new TokenStream(prompt, maxTokens, tf.MaxContext, options, stop, _model.Tokenizer, _model.Config.Vocab);
        LastStopReason = StopReason.Length;
        if (stream.Done) yield break;
        var logits = new float[_model.Config.Vocab];
        long prefillStart = System.Diagnostics.Stopwatch.GetTimestamp();
        Forward(stream.History.AsSpan(from, stream.Position - from), from, logits, stream.Position - from - 1, ct);
        LastPromptEvalTime = System.Diagnostics.Stopwatch.GetElapsedTime(prefillStart);
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            var step = stream.Next(logits);
            if (step.Done) LastStopReason = stream.StopReason;
            if (step.Id >= 0 || step.Text.Length > 0) yield return new GeneratedToken(step.Id, step.Text);
            if (step.Done) break;
            Forward(stream.History.AsSpan(stream.Position - 1, 1), stream.Position - 1, logits, 0, ct);
        }
    }

    /// <summary>
    /// One forward pass, after applying any memory budget asked for since the last one (docs/variable-memory.md): the
    /// budget moves between passes, never inside one.
    /// </summary>
    private void Forward(ReadOnlySpan<int> tokens, int pos, Span<float> logits, int logitsFrom, CancellationToken ct)
    {
        lock (_model.StepLock)
        {
            _model.AdaptBetweenSteps();
            _model.Transformer.Forward(tokens, pos, logits, logitsFrom, ct);
        }
    }
}
