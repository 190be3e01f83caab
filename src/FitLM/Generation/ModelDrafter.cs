using System.Numerics.Tensors;

namespace FitLM.Generation;

/// <summary>
/// Drafts with a smaller model of the same vocabulary, greedily, with its own KV cache. Each call first brings the
/// draft's cache in line with the history: it keeps the longest prefix it fed that the history still has (its
/// accepted drafts), rolls back the rest with the transformer's truncation, runs the new tokens in one batch, then
/// decodes the draft one token per pass. A step of k drafts costs one catch-up pass (one or two tokens once the
/// prompt is in) and k - 1 one-token passes of the draft model.
/// </summary>
public sealed class ModelDrafter : IDrafter
{
    private readonly LanguageModel _draft;
    private readonly bool _owns;
    private readonly int[] _fed;   // the tokens the draft's KV cache holds, by position
    private readonly float[] _logits;
    private readonly int[] _one = new int[1];
    private int _fedLength;

    /// <param name="draft">The draft model; disposed with the drafter when <paramref name="ownsModel"/>.</param>
    /// <param name="target">The model it drafts for: the vocabularies must be the same, token for token.</param>
    public ModelDrafter(LanguageModel draft, LanguageModel target, bool ownsModel = true)
    {
        ArgumentNullException.ThrowIfNull(draft);
        ArgumentNullException.ThrowIfNull(target);
        EnsureSameVocabulary(draft, target);
        _draft = draft;
        _owns = ownsModel;
        _fed = new int[draft.Transformer.MaxContext];
        _logits = new float[draft.Config.Vocab];
    }

    public string Name => "draft";

    /// <summary>The draft model.</summary>
    public LanguageModel Model => _draft;

    /// <summary>Refuses a draft whose token ids mean other text than the target's (a different tokenizer or vocabulary size).</summary>
    public static void EnsureSameVocabulary(LanguageModel draft, LanguageModel target)
    {
        var a = draft.Tokenizer;
        var b = target.Tokenizer;
        string name = Path.GetFileName(draft.Source.Path.TrimEnd('/', Path.DirectorySeparatorChar));
        if (draft.Config.Vocab != target.Config.Vocab || a.VocabSize != b.VocabSize)
            throw new FitLMException($"draft model {name} has a vocabulary of {draft.Config.Vocab} tokens and the model {target.Config.Vocab}: a draft must use the same tokenizer");
        for (int id = 0; id < a.VocabSize; id++)
            if (!string.Equals(a.TokenText(id), b.TokenText(id), StringComparison.Ordinal))
                throw new FitLMException($"draft model {name} has another tokenizer (token {id} is '{a.TokenText(id)}', the model's '{b.TokenText(id)}'): a draft must use the same tokenizer");
    }

    public int Draft(ReadOnlySpan<int> history, Span<int> draft, CancellationToken ct)
    {
        var tf = _draft.Transformer;
        int p = history.Length;
        // Drafts d1..dk need positions up to p + k - 2 in the draft's own context.
        int k = Math.Min(draft.Length, tf.MaxContext - p + 1);
        if (k <= 0 || p == 0) return 0;
        // Keep what the draft's cache holds that the history still has; at least the last token runs again, for its logits.
        int common = 0, limit = Math.Min(_fedLength, p - 1);
        while (common < limit && _fed[common] == history[common]) common++;
        var fresh = history[common..];
        Forward(fresh, common, ct);
        fresh.CopyTo(_fed.AsSpan(common));
        _fedLength = p;
        for (int i = 0; ; i++)
        {
            int next = TensorPrimitives.IndexOfMax(_logits);
            draft[i] = next;
            if (i + 1 == k) break;
            _one[0] = next;
            Forward(_one, p + i, ct);
            _fed[p + i] = next;
            _fedLength = p + i + 1;
        }
        return k;
    }

    /// <summary>One pass of the draft model, logits of its last row; the budget adapts between passes, as the target's does.</summary>
    private void Forward(ReadOnlySpan<int> tokens, int pos, CancellationToken ct)
    {
        lock (_draft.StepLock)
        {
            _draft.AdaptBetweenSteps();
            _draft.Transformer.Forward(tokens, pos, _logits, tokens.Length - 1, ct);
        }
    }

    public void Dispose()
    {
        if (_owns) _draft.Dispose();
    }
}
