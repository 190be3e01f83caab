using System.Text;
using FitLM.Tokenization;

namespace FitLM.Generation;

/// <summary>What one sampling step produced: the token (-1 for end of generation), the text that may be shown now, and whether the sequence ended.</summary>
/// <param name="Logprobs">Log-probabilities of the tokens whose text is released with this step (null unless asked for).</param>
public readonly record struct TokenStep(int Id, string Text, bool Done, IReadOnlyList<TokenLogprob>? Logprobs = null);

/// <summary>
/// The token loop of one sequence, shared by <see cref="Generator"/> and the server's batched sequences: given the
/// logits of the last position, penalize, (optionally) compute logprobs, sample, detect end of generation, decode
/// UTF-8 across token boundaries, hold back text that may begin a stop string, and stop at max tokens or the end
/// of the context. The caller runs the model and feeds <see cref="History"/>[<see cref="Position"/> - 1] next.
/// </summary>
public sealed class TokenStream
{
    private readonly Tokenizer _tokenizer;
    private readonly Sampler _sampler;
    private readonly Decoder _utf8 = Encoding.UTF8.GetDecoder();
    private readonly StringBuilder _pending = new();
    private readonly string[] _stops;
    private readonly int _context, _topLogprobs;
    private readonly List<TokenLogprob>? _held;
    private readonly int[] _masked; // end-of-generation ids never sampled (--ignore-eos), else empty
    private char[] _chars = new char[64];
    private int _decodedChars, _emittedChars;
    private float _logSumExp;

    /// <summary>Prompt, then generated tokens (sized for the prompt and max tokens).</summary>
    public int[] History { get; }
    public int PromptLength { get; }
    public int MaxTokens { get; }
    public int Generated { get; private set; }
    /// <summary>Tokens in <see cref="History"/>: the prompt and those generated.</summary>
    public int Position => PromptLength + Generated;
    public bool Done { get; private set; }
    /// <summary>Why it ended (Length until it does).</summary>
    public StopReason StopReason { get; private set; } = StopReason.Length;

    /// <param name="context">Most tokens (prompt and generated) the sequence may hold; generation ends there.</param>
    /// <param name="logprobs">-1: no logprobs; 0: each token's own; N: and the N most likely tokens at each step.</param>
    public TokenStream(IReadOnlyList<int> prompt, int maxTokens, int context, SamplingOptions sampling, IReadOnlyList<string>? stops,
        Tokenizer tokenizer, int vocab, int logprobs = -1)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentOutOfRangeException.ThrowIfNegative(maxTokens);
        _tokenizer = tokenizer;
        _sampler = new Sampler(sampling, vocab);
        _stops = stops?.Where(s => s.Length > 0).Distinct().ToArray() ?? [];
        _context = context;
        _topLogprobs = logprobs;
        _held = logprobs >= 0 ? new List<TokenLogprob>() : null;
        _masked = sampling.IgnoreEos ? Enumerable.Range(0, vocab).Where(tokenizer.IsEndOfGeneration).ToArray() : [];
        PromptLength = prompt.Count;
        MaxTokens = maxTokens;
        // Generation ends at the context, so a limit past it (int.MaxValue from a library caller) holds no more than that.
        History = new int[prompt.Count + Math.Min(maxTokens, Math.Max(1, context - prompt.Count))];
        for (int i = 0; i < prompt.Count; i++) History[i] = prompt[i];
        if (maxTokens == 0) Done = true;
    }

    /// <summary>Samples the next token from the logits of the last position (changed in place by the penalties).</summary>
    public TokenStep Next(Span<float> logits)
    {
        if (Done) throw new InvalidOperationException("the sequence has ended");
        _sampler.Penalize(logits, History.AsSpan(0, Position), Generated);
        foreach (int id in _masked) logits[id] = float.NegativeInfinity;
        var top = _held != null ? TopAlternatives(logits) : null;
        int next = _sampler.Pick(logits);
        if (_tokenizer.IsEndOfGeneration(next)) return End(StopReason.EndOfGeneration, "", -1);

        History[Position] = next;
        Generated++;
        if (top != null) _held!.Add(new TokenLogprob(next, logits[next] - _logSumExp, _decodedChars, top));
        var bytes = _tokenizer.TokenBytes(next);
        if (_chars.Length < bytes.Length + 8) _chars = new char[bytes.Length + 8];
        int nc = _utf8.GetChars(bytes, 0, bytes.Length, _chars, 0, flush: false);
        _decodedChars += nc;
        string emit;
        if (_stops.Length == 0) emit = nc > 0 ? new string(_chars, 0, nc) : "";
        else
        {
            _pending.Append(_chars, 0, nc);
            (emit, bool stopped) = StopStrings.Split(_pending, _stops);
            if (stopped)
            {
                // What follows the stop string is dropped, and so are the logprobs of tokens that only made it.
                _emittedChars += emit.Length;
                Done = true;
                StopReason = StopReason.StopString;
                return new TokenStep(next, emit, true, Release(all: false));
            }
        }
        _emittedChars += emit.Length;
        // Text held back for a stop string, and the bytes of an unfinished character, go out with the end.
        if (Generated >= MaxTokens) return End(StopReason.Length, emit, next);
        if (Position >= _context) return End(StopReason.ContextFull, emit, next);
        return new TokenStep(next, emit, false, Release(all: false));
    }

    /// <summary>The most likely tokens at this step with their logprobs; sets <see cref="_logSumExp"/> for the sampled token's.</summary>
    private TopLogprob[] TopAlternatives(ReadOnlySpan<float> logits)
    {
        _logSumExp = _sampler.LogSumExp(logits);
        var top = new TopLogprob[Math.Min(_topLogprobs, logits.Length)];
        int have = 0;
        // Insertion into a short sorted list: a token costs one comparison unless it beats the current last.
        for (int id = 0; id < logits.Length; id++)
        {
            float l = logits[id];
            if (have == top.Length && (have == 0 || l <= top[have - 1].Logprob)) continue;
            int at = have < top.Length ? have++ : have - 1;
            while (at > 0 && top[at - 1].Logprob < l) { top[at] = top[at - 1]; at--; }
            top[at] = new TopLogprob(id, l);
        }
        for (int i = 0; i < top.Length; i++) top[i] = top[i] with { Logprob = top[i].Logprob - _logSumExp };
        return top;
    }

    /// <summary>Ends the sequence: text held back for a possible stop string, and any bytes of an unfinished UTF-8 character, go out.</summary>
    private TokenStep End(StopReason reason, string emit, int id)
    {
        Done = true;
        StopReason = reason;
        int nc = _utf8.GetChars([], 0, 0, _chars, 0, flush: true);
        _pending.Append(_chars, 0, nc);
        if (_pending.Length > 0)
        {
            emit += _pending.ToString();
            _emittedChars += _pending.Length;
            _decodedChars += nc;
            _pending.Clear();
        }
        return new TokenStep(id, emit, true, Release(all: true));
    }

    /// <summary>Logprobs of the tokens whose text has been emitted (all of them at the end); the rest wait.</summary>
    private IReadOnlyList<TokenLogprob>? Release(bool all)
    {
        if (_held == null || _held.Count == 0) return null;
        int n = 0;
        while (n < _held.Count && (all || _held[n].TextOffset < _emittedChars)) n++;
        if (n == 0) return null;
        var released = _held.GetRange(0, n);
        _held.RemoveRange(0, n);
        return released;
    }
}
