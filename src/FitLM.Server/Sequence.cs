using System.Text;
using System.Threading.Channels;
using FitLM.Generation;
using FitLM.KvCache;
using FitLM.Tokenization;

namespace FitLM.Server;

/// <summary>Why a sequence ended, as OpenAI names it.</summary>
public enum FinishReason { None, Stop, Length, Cancelled, Error }

/// <summary>What the scheduler tells the request handler: a piece of text, then one final event with the reason.</summary>
public readonly record struct SequenceEvent(string Text, FinishReason Finish, string? Error = null);

/// <summary>
/// One request's generation: its prompt, sampler, stop conditions and KV store while it runs, and the channel its
/// text goes out on. The scheduler thread alone advances it; the handler only reads <see cref="Events"/> and may
/// <see cref="Cancel"/> it from any thread.
/// </summary>
public sealed class Sequence
{
    private readonly Channel<SequenceEvent> _events = Channel.CreateUnbounded<SequenceEvent>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    private readonly Tokenizer _tokenizer;
    private readonly Decoder _utf8 = Encoding.UTF8.GetDecoder();
    private readonly StringBuilder _pending = new();
    private readonly string[] _stops;
    private char[] _chars = new char[64];
    private volatile bool _cancelled;

    public string Id { get; }
    public int[] Prompt { get; }
    public int MaxTokens { get; }
    public Sampler Sampler { get; }
    /// <summary>Prompt then generated tokens; the repetition window and the decode input.</summary>
    public int[] History { get; }
    /// <summary>KV bytes reserved at admission (prompt + max tokens).</summary>
    public long ReservedBytes { get; set; }
    public IKvStore? Kv { get; set; }
    /// <summary>Prompt tokens already in the KV cache.</summary>
    public int Prefilled { get; set; }
    public int Generated { get; private set; }
    public bool Done { get; private set; }
    public bool Cancelled => _cancelled;
    public DateTime Enqueued { get; } = DateTime.UtcNow;
    /// <summary>When the first token was sampled (the end of prefill), for decode speed.</summary>
    public DateTime FirstToken { get; private set; }
    /// <summary>Position of the next token to feed: the prompt, then each sampled token.</summary>
    public int Position => Prompt.Length + Generated;

    public ChannelReader<SequenceEvent> Events => _events.Reader;

    public Sequence(string id, int[] prompt, int maxTokens, SamplingOptions sampling, IReadOnlyList<string> stops, Tokenizer tokenizer, int vocab)
    {
        Id = id;
        Prompt = prompt;
        MaxTokens = maxTokens;
        Sampler = new Sampler(sampling, vocab);
        History = new int[prompt.Length + maxTokens];
        prompt.CopyTo(History, 0);
        _stops = stops.Where(s => s.Length > 0).Distinct().ToArray();
        _tokenizer = tokenizer;
    }

    /// <summary>Stops this request: the scheduler drops it, and returns its KV pages, before its next step.</summary>
    public void Cancel() => _cancelled = true;

    /// <summary>
    /// Samples the next token from this sequence's logits and emits its text; returns false when the sequence has
    /// finished (end of generation, a stop string, max tokens, or the end of the context).
    /// </summary>
    public bool Step(Span<float> logits, int context)
    {
        int next = Sampler.Sample(logits, History.AsSpan(0, Position));
        if (Generated == 0) FirstToken = DateTime.UtcNow;
        if (_tokenizer.IsEndOfGeneration(next)) { Finish(FinishReason.Stop); return false; }
        History[Position] = next;
        Generated++;
        var bytes = _tokenizer.TokenBytes(next);
        if (_chars.Length < bytes.Length + 8) _chars = new char[bytes.Length + 8];
        int nc = _utf8.GetChars(bytes, 0, bytes.Length, _chars, 0, flush: false);
        if (_stops.Length == 0)
        {
            if (nc > 0) _events.Writer.TryWrite(new SequenceEvent(new string(_chars, 0, nc), FinishReason.None));
        }
        else
        {
            _pending.Append(_chars, 0, nc);
            var (emit, stopped) = StopStrings.Split(_pending, _stops);
            if (emit.Length > 0) _events.Writer.TryWrite(new SequenceEvent(emit, FinishReason.None));
            if (stopped) { Finish(FinishReason.Stop, flush: false); return false; }
        }
        if (Generated >= MaxTokens || Position >= context) { Finish(FinishReason.Length); return false; }
        return true;
    }

    /// <summary>
    /// Ends the sequence: text held back for a possible stop string goes out (unless a stop string was hit: what
    /// follows it is dropped), then the final event.
    /// </summary>
    public void Finish(FinishReason reason, string? error = null, bool flush = true)
    {
        if (Done) return;
        Done = true;
        if (flush && reason is FinishReason.Stop or FinishReason.Length)
        {
            int nc = _utf8.GetChars([], 0, 0, _chars, 0, flush: true);
            _pending.Append(_chars, 0, nc);
            if (_pending.Length > 0) _events.Writer.TryWrite(new SequenceEvent(_pending.ToString(), FinishReason.None));
            _pending.Clear();
        }
        _events.Writer.TryWrite(new SequenceEvent("", reason, error));
        _events.Writer.TryComplete();
    }
}
