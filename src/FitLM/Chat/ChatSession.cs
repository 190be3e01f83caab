using System.Diagnostics;
using System.Text;
using FitLM.Generation;
using FitLM.KvCache;

namespace FitLM.Chat;

/// <summary>How one reply of a <see cref="ChatSession"/> is generated.</summary>
public sealed record ChatReplyOptions
{
    /// <summary>Most tokens in the reply; -1 (or any value ≤ 0): until the end of the turn or of the context.</summary>
    public int MaxTokens { get; init; } = -1;
    public SamplingOptions Sampling { get; init; } = new();
}

/// <summary>The prompt a turn is about to run: the whole conversation rendered through the template.</summary>
/// <param name="Text">The rendered conversation, ending where the assistant's reply begins.</param>
/// <param name="Tokens">Its length in tokens.</param>
/// <param name="Reused">Leading tokens whose KV cache the previous turn left (not prefilled again).</param>
/// <param name="DroppedMessages">Oldest messages forgotten so that the prompt leaves room for a reply.</param>
public sealed record ChatPrompt(string Text, int Tokens, int Reused, int DroppedMessages);

/// <summary>One assistant reply and how it ended.</summary>
/// <param name="Cancelled">Stopped by the caller (Ctrl-C); the text so far is kept in the history.</param>
public sealed record ChatReply(string Text, int Tokens, StopReason Stop, bool Cancelled, TimeSpan PromptTime, TimeSpan ReplyTime);

/// <summary>
/// A conversation with a model, turn by turn: every turn renders the whole history through the chat template
/// (so the prompt is exactly what the template makes of it), and prefills only what the KV cache does not
/// already hold from the previous turn. When the history no longer leaves room for a reply, the oldest
/// exchanges are dropped (the system prompt stays). The session owns the model's KV cache while it lives:
/// nothing else may run on the same model between turns.
/// </summary>
public sealed class ChatSession
{
    /// <summary>Room kept for a reply of unlimited length when old turns must go: a few paragraphs.</summary>
    private const int DefaultReplyRoom = 256;

    private readonly LanguageModel _model;
    private readonly List<ChatTurn> _history = [];
    // The tokens whose keys and values the transformer's KV cache holds, in order: the previous prompt and reply.
    private int[] _cached = [];
    // Only the float stores rewind to any position; quantized (KIVI, XQuant) and evicting (H2O) ones re-prefill.
    // Asked each turn: Transformer.ChangeKv may have moved the cache to another type between turns.
    private bool CanReuse => _model.Transformer.Device != null || _model.Transformer.Kv is PagedKvStore;

    public ChatTemplate Template { get; }
    public string? SystemPrompt { get; }
    public IReadOnlyList<ChatTurn> History => _history;

    public ChatSession(LanguageModel model, ChatTemplate template, string? systemPrompt = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(template);
        _model = model;
        Template = template;
        SystemPrompt = string.IsNullOrEmpty(systemPrompt) ? null : systemPrompt;
    }

    /// <summary>Forgets the conversation (the system prompt stays).</summary>
    public void Clear() => _history.Clear();

    /// <summary>The messages the template sees: the system prompt, the history, and <paramref name="pending"/> when given.</summary>
    public List<ChatTurn> Messages(string? pending = null) => Messages(pending, 0);

    private List<ChatTurn> Messages(string? pending, int skip)
    {
        var list = new List<ChatTurn>(_history.Count - skip + 2);
        if (SystemPrompt != null) list.Add(new ChatTurn("system", SystemPrompt));
        for (int i = skip; i < _history.Count; i++) list.Add(_history[i]);
        if (pending != null) list.Add(new ChatTurn("user", pending));
        return list;
    }

    /// <summary>
    /// Sends <paramref name="userMessage"/> and generates the reply, streaming its text to <paramref name="onText"/>.
    /// A message that cannot fit the context even alone throws a FitLMException and leaves the history as it was.
    /// Cancelling <paramref name="ct"/> stops the reply; the text so far is kept as the assistant's turn.
    /// </summary>
    public ChatReply Send(string userMessage, ChatReplyOptions options, Action<string>? onText = null,
        Action<ChatPrompt>? onPrompt = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(userMessage);
        ArgumentNullException.ThrowIfNull(options);
        options.Sampling.Validate();
        var tf = _model.Transformer;
        int context = tf.MaxContext;
        int room = Math.Max(1, Math.Min(options.MaxTokens > 0 ? options.MaxTokens : DefaultReplyRoom, context / 4));

        var (text, prompt, dropped) = Fit(userMessage, context, room);
        int reused = 0;
        if (CanReuse)
        {
            int limit = Math.Min(Math.Min(_cached.Length, prompt.Length - 1), tf.CachedPositions);
            while (reused < limit && _cached[reused] == prompt[reused]) reused++;
        }
        onPrompt?.Invoke(new ChatPrompt(text, prompt.Length, reused, dropped));

        int max = context - prompt.Length;
        if (options.MaxTokens > 0) max = Math.Min(max, options.MaxTokens);
        var generator = new Generator(_model);
        var ids = new List<int>(Math.Min(max, 4096));
        var reply = new StringBuilder();
        var clock = Stopwatch.StartNew();
        TimeSpan first = TimeSpan.Zero;
        bool cancelled = false;
        _cached = []; // until the turn ends the cache holds a prompt that is not yet recorded
        try
        {
            foreach (var t in generator.Generate(prompt, max, options.Sampling, Template.StopStrings, reused, ct))
            {
                if (t.Id >= 0)
                {
                    if (ids.Count == 0) first = clock.Elapsed;
                    ids.Add(t.Id);
                }
                if (t.Text.Length == 0) continue;
                reply.Append(t.Text);
                onText?.Invoke(t.Text);
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            cancelled = true;
        }
        if (ids.Count == 0) first = clock.Elapsed;
        _history.Add(new ChatTurn("user", userMessage));
        _history.Add(new ChatTurn("assistant", reply.ToString()));
        if (!cancelled) _cached = [.. prompt, .. ids.Take(Math.Max(0, tf.CachedPositions - prompt.Length))];
        var stop = cancelled ? StopReason.Length : generator.LastStopReason;
        return new ChatReply(reply.ToString(), ids.Count, stop, cancelled, first, clock.Elapsed - first);
    }

    /// <summary>
    /// Renders the conversation with the new message, dropping the oldest exchanges (user message through the
    /// assistant's reply) while the prompt leaves less than <paramref name="room"/> tokens of the context.
    /// </summary>
    private (string Text, int[] Tokens, int Dropped) Fit(string userMessage, int context, int room)
    {
        int skip = 0;
        while (true)
        {
            string text = Template.Render(Messages(userMessage, skip), addGenerationPrompt: true);
            var tokens = Template.Tokenize(_model.Tokenizer, text);
            if (tokens.Length == 0) throw new FitLMException("the prompt is empty (no tokens)");
            if (tokens.Length + room <= context || skip == _history.Count)
            {
                if (tokens.Length >= context)
                    throw new FitLMException(_history.Count > 0 || SystemPrompt != null
                        ? $"this message makes a prompt of {tokens.Length} tokens even without the history; the context holds {context}: shorten it or raise -c"
                        : $"this message is {tokens.Length} tokens; the context holds {context}: shorten it or raise -c");
                _history.RemoveRange(0, skip);
                return (text, tokens, skip);
            }
            // One exchange: the oldest message and everything up to the next user message.
            skip++;
            while (skip < _history.Count && _history[skip].Role != "user") skip++;
        }
    }
}
