using System.Numerics.Tensors;
using System.Threading.Channels;
using FitLM.Generation;
using FitLM.KvCache;
using FitLM.Tokenization;

namespace FitLM.Server;

/// <summary>Why a sequence ended, as OpenAI names it.</summary>
public enum FinishReason { None, Stop, Length, Cancelled, Error }

/// <summary>What the scheduler tells the request handler: a piece of text (with its tokens' logprobs when asked), then one final event with the reason.</summary>
public readonly record struct SequenceEvent(string Text, FinishReason Finish, string? Error = null, IReadOnlyList<TokenLogprob>? Logprobs = null);

/// <summary>
/// One request's work: a generation (its <see cref="TokenStream"/>: sampler, stop conditions) or an embedding (its
/// prompt's final hidden states, mean-pooled), its KV store while it runs, and the channel its text goes out on.
/// The scheduler thread alone advances it; the handler only reads <see cref="Events"/> and may
/// <see cref="Cancel"/> it from any thread.
/// </summary>
public sealed class Sequence
{
    private readonly Channel<SequenceEvent> _events = Channel.CreateUnbounded<SequenceEvent>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    private readonly TokenStream? _stream;
    private readonly float[]? _pooled;
    private volatile bool _cancelled;

    public string Id { get; }
    public int[] Prompt { get; }
    public int MaxTokens { get; }
    /// <summary>Prompt then generated tokens; the decode input.</summary>
    public int[] History { get; }
    /// <summary>KV bytes reserved at admission (prompt + max tokens).</summary>
    public long ReservedBytes { get; set; }
    public IKvStore? Kv { get; set; }
    /// <summary>Prompt tokens already in the KV cache.</summary>
    public int Prefilled { get; set; }
    public int Generated => _stream?.Generated ?? 0;
    public bool Done { get; private set; }
    public bool Cancelled => _cancelled;
    public DateTime Enqueued { get; } = DateTime.UtcNow;
    /// <summary>When the first token was sampled (the end of prefill), for decode speed.</summary>
    public DateTime FirstToken { get; private set; }
    /// <summary>Position of the next token to feed: the prompt, then each sampled token.</summary>
    public int Position => _stream?.Position ?? Prompt.Length;
    /// <summary>An embedding request: prefill only, its hidden states pooled into <see cref="Embedding"/>.</summary>
    public bool IsEmbedding => _pooled != null;
    /// <summary>The mean-pooled, unit-length embedding once an embedding sequence has finished.</summary>
    public float[]? Embedding { get; private set; }

    public ChannelReader<SequenceEvent> Events => _events.Reader;

    /// <param name="context">Most tokens the sequence may hold (prompt + completion).</param>
    /// <param name="logprobs">-1: none; 0: each token's; N: and the N most likely at each step.</param>
    public Sequence(string id, int[] prompt, int maxTokens, int context, SamplingOptions sampling, IReadOnlyList<string> stops, Tokenizer tokenizer, int vocab,
        int logprobs = -1)
    {
        Id = id;
        Prompt = prompt;
        MaxTokens = maxTokens;
        _stream = new TokenStream(prompt, maxTokens, context, sampling, stops, tokenizer, vocab, logprobs);
        History = _stream.History;
    }

    private Sequence(string id, int[] prompt, int dim)
    {
        Id = id;
        Prompt = prompt;
        History = prompt;
        _pooled = new float[dim];
    }

    /// <summary>An embedding request over <paramref name="prompt"/> for a model of hidden size <paramref name="dim"/>.</summary>
    public static Sequence ForEmbedding(string id, int[] prompt, int dim) => new(id, prompt, dim);

    /// <summary>Stops this request: the scheduler drops it, and returns its KV pages, before its next step.</summary>
    public void Cancel() => _cancelled = true;

    /// <summary>
    /// Samples the next token from this sequence's logits and emits its text; returns false when the sequence has
    /// finished (end of generation, a stop string, max tokens, or the end of the context).
    /// </summary>
    public bool Step(Span<float> logits)
    {
        if (_stream == null) throw new InvalidOperationException("an embedding sequence samples nothing");
        if (_stream.Generated == 0) FirstToken = DateTime.UtcNow;
        var step = _stream.Next(logits);
        if (step.Text.Length > 0 || step.Logprobs != null) _events.Writer.TryWrite(new SequenceEvent(step.Text, FinishReason.None, Logprobs: step.Logprobs));
        if (!step.Done) return true;
        Finish(_stream.StopReason is StopReason.Length or StopReason.ContextFull ? FinishReason.Length : FinishReason.Stop);
        return false;
    }

    /// <summary>Adds final hidden states (rows of the model's width) of prompt positions to the pool.</summary>
    public void AddHidden(ReadOnlySpan<float> rows)
    {
        int dim = _pooled!.Length;
        for (int r = 0; r < rows.Length; r += dim) TensorPrimitives.Add(_pooled, rows.Slice(r, dim), _pooled);
    }

    /// <summary>Mean over the prompt, then unit L2 length (llama.cpp's server normalizes the same way), and the end.</summary>
    public void FinishEmbedding()
    {
        var e = _pooled!;
        TensorPrimitives.Divide(e, Prompt.Length, e);
        float norm = TensorPrimitives.Norm(e);
        if (norm > 0) TensorPrimitives.Divide(e, norm, e);
        Embedding = e;
        Finish(FinishReason.Stop);
    }

    /// <summary>Ends the sequence with its final event (the token stream has already released its text).</summary>
    public void Finish(FinishReason reason, string? error = null)
    {
        if (Done) return;
        Done = true;
        _events.Writer.TryWrite(new SequenceEvent("", reason, error));
        _events.Writer.TryComplete();
    }
}
