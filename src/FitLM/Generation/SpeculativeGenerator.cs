using FitLM.Tensors;

namespace FitLM.Generation;

/// <summary>
/// Speculative decoding of one sequence: a drafter (<see cref="LookupDrafter"/>, <see cref="ModelDrafter"/>) proposes
/// k tokens, the target runs [last token, d1 … dk] in ONE forward pass with logits at every position, and the
/// <see cref="TokenStream"/> picks from those logits position by position, exactly as the plain loop would: while its
/// pick equals the draft the next position's logits are valid (their input was that very token) and it goes on;
/// the first pick that differs, or the pick after the last draft, ends the step. The target's KV cache then rolls
/// back to the accepted length (the next pass's truncation). Every token is picked by the same stream, from logits
/// equal to plain decoding's, so the stop conditions (end of generation, stop strings, the token limit, the end
/// of the context), penalties and the text are the same as <see cref="Generator"/>'s.
/// <para>
/// Equal logits: the verification pass computes each row as a one-row pass would — <see cref="MatMul.RowWise"/>
/// (matrix-vector kernel per row; the matrix-matrix kernel sums in another order) and, under the same flag,
/// attention query by query (the split of a long context into spans depends on the batch; see TileAttention).
/// So greedy output is identical to plain decoding, bit for bit, and so is sampled output with the same seed.
/// </para>
/// <para>
/// Sampling (temperature &gt; 0): drafts are deterministic (the lookup's copy, the draft model's greedy choice: q is
/// one-hot), and for a one-hot q the speculative-sampling rule — accept d with probability min(1, p(d)/q(d)), else
/// draw from max(0, p - q) normalized — is the same as drawing x ~ p and accepting when x = d: P(accept) = p(d), and
/// a rejected x is distributed as p without d, renormalized. The stream's draw is that x, so no separate rule is
/// needed, and with a seed the output is the same as plain sampling's.
/// </para>
/// </summary>
public sealed class SpeculativeGenerator
{
    private readonly LanguageModel _model;
    private readonly IDrafter _drafter;
    private readonly int _draftMax;
    private int _steps, _drafted, _accepted, _produced;
    /// <summary>Tokens the next step may draft: adapted to how the drafts fare (see <see cref="Adapt"/>).</summary>
    private int _limit;

    /// <param name="draftMax">Most tokens drafted per step (llama.cpp's --draft-max).</param>
    public SpeculativeGenerator(LanguageModel model, IDrafter drafter, int draftMax)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(drafter);
        if (draftMax is < 1 or > 64) throw new FitLMException($"--draft-max {draftMax} is out of range (1..64)");
        _model = model;
        _drafter = drafter;
        _draftMax = Math.Min(draftMax, model.Transformer.MaxBatch - 1);
        if (_draftMax < 1) throw new FitLMException($"speculative decoding needs a batch of at least 2 tokens (the model was loaded with {model.Transformer.MaxBatch})");
        if (SpeculativeKv.Problem(model.Transformer.KvStores.Options) is { } problem) throw new FitLMException(problem);
    }

    public StopReason LastStopReason { get; private set; }

    /// <summary>Time of the last call's prompt forward pass alone (as <see cref="Generator.LastPromptEvalTime"/>).</summary>
    public TimeSpan LastPromptEvalTime { get; private set; }

    /// <summary>The last call's passes, drafts and acceptances (read after it ends; the counts grow while it runs).</summary>
    public SpeculativeStatistics Statistics => new(_steps, _drafted, _accepted, _produced);

    /// <summary>As <see cref="Generator.Generate"/>, the same tokens; the prompt always runs whole (no cached prefix).</summary>
    public IEnumerable<GeneratedToken> Generate(IReadOnlyList<int> prompt, int maxTokens, SamplingOptions options,
        IReadOnlyList<string>? stop = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        var tf = _model.Transformer;
        if (prompt.Count == 0) throw new FitLMException("the prompt is empty (no tokens)");
        if (prompt.Count >= tf.MaxContext)
            throw new FitLMException($"the prompt has {prompt.Count} tokens; the context holds {tf.MaxContext} (raise -c)");
        return Run(prompt, Math.Max(0, maxTokens), options, stop, ct);
    }

    private IEnumerable<GeneratedToken> Run(IReadOnlyList<int> prompt, int maxTokens, SamplingOptions options, IReadOnlyList<string>? stop, CancellationToken ct)
    {
        var tf = _model.Transformer;
        int vocab = _model.Config.Vocab;
        var stream = new TokenStream(prompt, maxTokens, tf.MaxContext, options, stop, _model.Tokenizer, vocab);
        _steps = _drafted = _accepted = _produced = 0;
        _limit = _draftMax;
        LastStopReason = StopReason.Length;
        if (stream.Done) yield break;
        // Logits of every row of a step, and the step's input: allocated once per call, never per token.
        var logits = new float[(_draftMax + 1) * vocab];
        var batch = new int[_draftMax + 1];
        int p = stream.Position;
        long prefillStart = System.Diagnostics.Stopwatch.GetTimestamp();
        lock (_model.StepLock)
        {
            _model.AdaptBetweenSteps();
            tf.Forward(stream.History.AsSpan(0, p), 0, logits.AsSpan(0, vocab), p - 1, ct);
        }
        LastPromptEvalTime = System.Diagnostics.Stopwatch.GetElapsedTime(prefillStart);
        int rows = 1, drafted = 0;
        while (true)
        {
            // Pick from each row in turn while the picks confirm the draft; row i's input was draft token i - 1.
            int confirmedRows = 0;
            for (int i = 0; i < rows; i++)
            {
                ct.ThrowIfCancellationRequested();
                var step = stream.Next(logits.AsSpan(i * vocab, vocab));
                bool confirmed = i < drafted && step.Id == batch[i + 1];
                if (step.Id >= 0 && _steps > 0) _produced++; // the prompt pass's token is not the steps'
                if (confirmed) { _accepted++; confirmedRows++; }
                if (step.Done) LastStopReason = stream.StopReason;
                if (step.Id >= 0 || step.Text.Length > 0) yield return new GeneratedToken(step.Id, step.Text);
                if (step.Done) yield break;
                if (!confirmed) break;
            }
            if (drafted > 0) Adapt(drafted, confirmedRows);
            drafted = Verify(stream, batch, logits, ct);
            rows = drafted + 1;
        }
    }

    /// <summary>
    /// The next step's draft length, as TCP's slow start: a draft accepted whole doubles it (up to draft-max), a
    /// rejection sets it to one more than was accepted. Each drafted row costs the verification pass nearly a decode
    /// step where the model is compute-bound (pycoder-29m on 2 cores: ~0.65 of one), so rows that will be rejected are
    /// not free; a long copy still reaches the full length in a few steps.
    /// </summary>
    private void Adapt(int drafted, int accepted) =>
        _limit = accepted == drafted ? Math.Min(_draftMax, 2 * Math.Max(_limit, drafted)) : Math.Max(1, accepted + 1);

    /// <summary>
    /// A draft length whose pass has a multiple of 4 rows (k + 1), up to <paramref name="most"/>, else down to one,
    /// else <paramref name="k"/>. The row-wise kernels multiply 8 or 4 rows together and the rest one by one, each
    /// pass over the weights again: measured on pycoder-29m q8_0, 2 threads (`fitlm bench --lookup`), a pass of 2 rows
    /// cost 1.65-1.8 one-row passes and one of 4 rows 2.1-2.7 (8 rows 3.7-5.1), so a draft of 3 costs little more
    /// than a draft of 1 and has two more chances.
    /// </summary>
    private static int WholeTiles(int k, int most)
    {
        if (k <= 0) return k;
        int up = (k + 4) / 4 * 4 - 1, down = (k + 1) / 4 * 4 - 1;
        return up <= most ? up : down >= 3 ? down : k;
    }

    /// <summary>
    /// One target pass: drafts up to the limits, then runs [last token, drafts] from position Position - 1 with
    /// logits for every row, each row computed as a one-row pass. Returns how many tokens were drafted.
    /// </summary>
    private int Verify(TokenStream stream, int[] batch, float[] logits, CancellationToken ct)
    {
        var tf = _model.Transformer;
        int p = stream.Position, vocab = _model.Config.Vocab;
        lock (_model.StepLock)
        {
            // Roll back rejected rows before the budget may move the cache to another type (which must then hold only accepted ones).
            if (tf.Kv.Length > p - 1) tf.Kv.Truncate(p - 1);
            _model.AdaptBetweenSteps();
            // Drafts past the token limit or the context could never be used; a quantized cache may bound them too.
            int most = Math.Min(_draftMax, Math.Min(tf.MaxContext - p, stream.MaxTokens - stream.Generated - 1));
            most = SpeculativeKv.MaxDraft(tf.KvStores.Options, _model.Config, p, Math.Max(0, most));
            int k = WholeTiles(Math.Min(_limit, most), most);
            int drafted = k > 0 ? _drafter.Draft(stream.History.AsSpan(0, p), batch.AsSpan(1, k), ct) : 0;
            batch[0] = stream.History[p - 1];
            // Each row exactly as a one-row pass (see the class comment).
            tf.Forward(batch.AsSpan(0, drafted + 1), p - 1, logits.AsSpan(0, (drafted + 1) * vocab), 0, batchInvariant: true, ct);
            _steps++;
            _drafted += drafted;
            return drafted;
        }
    }
}
