using System.Runtime.CompilerServices;
using System.Threading.Channels;
using FitLM.Generation;
using FitLM.Model;
using Microsoft.Extensions.AI;

namespace FitLM.Chat;

/// <summary>
/// <see cref="IChatClient"/> over a loaded <see cref="LanguageModel"/>: renders the conversation with the model's chat
/// template, generates on a background thread and streams text as it is produced. A model runs one request at a
/// time (its KV cache is single-sequence), so concurrent requests on the same model wait their turn.
/// </summary>
public sealed class FitLMChatClient : IChatClient
{
    // Per model, not per client: two clients over one model must not interleave on its KV cache.
    private static readonly ConditionalWeakTable<LanguageModel, SemaphoreSlim> Gates = new();

    private readonly LanguageModel _model;
    private readonly ChatClientMetadata _metadata;

    public ChatTemplate Template { get; }
    public string ModelId { get; }

    /// <param name="template">Overrides <see cref="ChatTemplate.ForModel"/>.</param>
    /// <param name="modelId">Reported as the model id; defaults to the model file or folder name.</param>
    public FitLMChatClient(LanguageModel model, ChatTemplate? template = null, string? modelId = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        _model = model;
        Template = template ?? ChatTemplate.ForModel(model);
        ModelId = modelId ?? Path.GetFileName(Path.TrimEndingDirectorySeparator(model.Source.Path));
        _metadata = new ChatClientMetadata("fitlm", null, ModelId);
    }

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in GetStreamingResponseAsync(messages, options, cancellationToken).ConfigureAwait(false)) updates.Add(u);
        return updates.ToChatResponse();
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var request = Prepare(messages, options);
        var gate = Gates.GetValue(_model, _ => new SemaphoreSlim(1, 1));
        await gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        var channel = Channel.CreateUnbounded<ChatResponseUpdate>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        // Cancelled by the caller's token, or by the consumer leaving the stream early.
        var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        Task producer;
        try
        {
            producer = Task.Factory.StartNew(() => Produce(request, channel.Writer, stop.Token), CancellationToken.None,
                TaskCreationOptions.LongRunning, TaskScheduler.Default);
        }
        catch
        {
            gate.Release();
            stop.Dispose();
            throw;
        }
        try
        {
            await foreach (var update in channel.Reader.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
                yield return update;
        }
        finally
        {
            stop.Cancel();
            await producer.ConfigureAwait(false); // never faults: errors travel through the channel
            stop.Dispose();
            gate.Release();
        }
    }

    private sealed record Request(int[] Prompt, int MaxTokens, SamplingOptions Sampling, IReadOnlyList<string> Stops, string ResponseId);

    private Request Prepare(IEnumerable<ChatMessage> messages, ChatOptions? options)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var turns = new List<ChatTurn>();
        if (!string.IsNullOrEmpty(options?.Instructions)) turns.Add(new ChatTurn("system", options.Instructions));
        foreach (var m in messages) turns.Add(new ChatTurn(m.Role.Value, m.Text));
        if (turns.Count == 0) throw new FitLMException("the conversation has no messages");
        var prompt = Template.Tokenize(_model.Tokenizer, Template.Render(turns, addGenerationPrompt: true));
        if (prompt.Length == 0) throw new FitLMException("the prompt is empty (no tokens)");
        int room = _model.Transformer.MaxContext - prompt.Length;
        if (room <= 0) throw new FitLMException($"the prompt has {prompt.Length} tokens; the context holds {_model.Transformer.MaxContext}");
        int max = options?.MaxOutputTokens is int m0 ? m0 : room;
        if (max < 1) throw new FitLMException($"max output tokens {max} is out of range (at least 1)");
        var defaults = new SamplingOptions();
        var sampling = new SamplingOptions
        {
            Temperature = options?.Temperature ?? defaults.Temperature,
            TopP = options?.TopP ?? defaults.TopP,
            TopK = options?.TopK ?? defaults.TopK,
            // Seeds are any long in the API; the sampler takes a non-negative int.
            Seed = options?.Seed is long s ? (int)(s & int.MaxValue) : -1,
        };
        sampling.Validate();
        var stops = new List<string>(Template.StopStrings);
        if (options?.StopSequences is { } extra) stops.AddRange(extra.Where(x => !string.IsNullOrEmpty(x)));
        return new Request(prompt, Math.Min(max, room), sampling, stops, "fitlm-" + Guid.NewGuid().ToString("N"));
    }

    private void Produce(Request r, ChannelWriter<ChatResponseUpdate> writer, CancellationToken ct)
    {
        try
        {
            var generator = new Generator(_model);
            var created = DateTimeOffset.UtcNow;
            int produced = 0;
            foreach (var token in generator.Generate(r.Prompt, r.MaxTokens, r.Sampling, r.Stops, ct: ct))
            {
                if (token.Id >= 0) produced++;
                if (token.Text.Length == 0) continue;
                writer.TryWrite(new ChatResponseUpdate(ChatRole.Assistant, token.Text)
                {
                    ResponseId = r.ResponseId, MessageId = r.ResponseId, ModelId = ModelId, CreatedAt = created,
                });
            }
            ct.ThrowIfCancellationRequested();
            var finish = generator.LastStopReason is StopReason.Length or StopReason.ContextFull ? ChatFinishReason.Length : ChatFinishReason.Stop;
            var usage = new UsageDetails { InputTokenCount = r.Prompt.Length, OutputTokenCount = produced, TotalTokenCount = r.Prompt.Length + produced };
            writer.TryWrite(new ChatResponseUpdate(ChatRole.Assistant, [new UsageContent(usage)])
            {
                ResponseId = r.ResponseId, MessageId = r.ResponseId, ModelId = ModelId, CreatedAt = created, FinishReason = finish,
            });
            writer.TryComplete();
        }
        catch (Exception e)
        {
            writer.TryComplete(e);
        }
    }

    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey != null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return _metadata;
        if (serviceType.IsInstanceOfType(this)) return this;
        if (serviceType == typeof(LanguageModel)) return _model;
        if (serviceType == typeof(ChatTemplate)) return Template;
        return null;
    }

    /// <summary>The model belongs to the caller, who disposes it.</summary>
    public void Dispose() { }
}
