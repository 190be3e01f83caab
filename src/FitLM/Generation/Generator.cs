using System.Text;
using FitLM.Model;

namespace FitLM.Generation;

/// <summary>Why generation stopped.</summary>
public enum StopReason { Length, EndOfGeneration, StopString, ContextFull }

/// <summary>One generated token and the text it completes (may be empty while a UTF-8 character is split across tokens).</summary>
public readonly record struct GeneratedToken(int Id, string Text);

/// <summary>
/// Autoregressive generation: prefill the prompt in batches, then decode one token at a time, sampling each
/// from the logits, until EOS/EOT, a stop string, the token limit or the end of the context.
/// </summary>
public sealed class Generator
{
    private readonly LanguageModel _model;

    public Generator(LanguageModel model) => _model = model;

    public StopReason LastStopReason { get; private set; }

    public IEnumerable<GeneratedToken> Generate(IReadOnlyList<int> prompt, int maxTokens, SamplingOptions options,
        IReadOnlyList<string>? stop = null, CancellationToken ct = default)
    {
        var tf = _model.Transformer;
        var tok = _model.Tokenizer;
        int vocab = _model.Config.Vocab;
        if (prompt.Count == 0) throw new FitLMException("the prompt is empty (no tokens)");
        if (prompt.Count >= tf.MaxContext)
            throw new FitLMException($"the prompt has {prompt.Count} tokens; the context holds {tf.MaxContext} (raise -c)");

        var sampler = new Sampler(options, vocab);
        var logits = new float[vocab];
        var history = new List<int>(prompt.Count + Math.Max(0, maxTokens));
        history.AddRange(prompt);
        var promptArr = prompt.ToArray();
        tf.Forward(promptArr, 0, logits, promptArr.Length - 1, ct);
        int pos = promptArr.Length;

        var decoder = Encoding.UTF8.GetDecoder();
        var chars = new char[64];
        var stops = stop?.Where(s => s.Length > 0).ToArray() ?? [];
        // Text that might be the start of a stop string is held back until it is clearly not.
        var pending = new StringBuilder();
        int[] one = new int[1];
        LastStopReason = StopReason.Length;
        for (int i = 0; i < maxTokens; i++)
        {
            ct.ThrowIfCancellationRequested();
            int next = sampler.Sample(logits, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(history));
            if (tok.IsEndOfGeneration(next))
            {
                LastStopReason = StopReason.EndOfGeneration;
                break;
            }
            history.Add(next);
            var bytes = tok.TokenBytes(next);
            if (chars.Length < bytes.Length + 8) chars = new char[bytes.Length + 8];
            int nc = decoder.GetChars(bytes, 0, bytes.Length, chars, 0, flush: false);
            if (stops.Length == 0)
            {
                yield return new GeneratedToken(next, new string(chars, 0, nc));
            }
            else
            {
                pending.Append(chars, 0, nc);
                var (emit, stopped) = StopStrings.Split(pending, stops);
                yield return new GeneratedToken(next, emit);
                if (stopped)
                {
                    LastStopReason = StopReason.StopString;
                    yield break;
                }
            }
            if (i == maxTokens - 1) break;
            if (pos >= tf.MaxContext)
            {
                LastStopReason = StopReason.ContextFull;
                break;
            }
            one[0] = next;
            tf.Forward(one, pos, logits, 0, ct);
            pos++;
        }
        if (pending.Length > 0) yield return new GeneratedToken(-1, pending.ToString());
    }
}
