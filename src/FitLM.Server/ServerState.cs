using FitLM.Chat;
using FitLM.Model;

namespace FitLM.Server;

/// <summary>What every handler shares: the model, its chat template, the scheduler and budget, metrics, the request log.</summary>
internal sealed class ServerState(LanguageModel model, ServerOptions options, Scheduler scheduler, KvBudget budget, ServerMetrics metrics)
{
    public LanguageModel Model { get; } = model;
    public ServerOptions Options { get; } = options;
    public Scheduler Scheduler { get; } = scheduler;
    public KvBudget Budget { get; } = budget;
    public ServerMetrics Metrics { get; } = metrics;
    public ChatTemplate Template { get; } = ChatTemplate.ForModel(model);
    public long Created { get; } = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    /// <summary>The id clients name: the model's file (or folder) name unless given.</summary>
    public string ModelId { get; } = options.ModelId ?? Path.GetFileName(Path.TrimEndingDirectorySeparator(model.Source.Path));

    /// <summary>
    /// Which model names a request may give: this model's id, its id without the extension, or "fitlm" (one model
    /// per server, so tools that insist on a name of their own still work). A missing model field means this one.
    /// </summary>
    public bool Serves(string? name) =>
        name == null || name == ModelId || name == Path.GetFileNameWithoutExtension(ModelId) || name == "fitlm";

    /// <summary>The chat template's text as the model gives it (GGUF tokenizer.chat_template), else the built-in one's name.</summary>
    public string TemplateText => _templateText ??= TemplateTextOf(Model) ?? Template.Name;
    private string? _templateText;

    /// <summary>For /props: this build's version.</summary>
    public string BuildInfo { get; } = "fitlm " + (typeof(ServerState).Assembly.GetName().Version?.ToString(3) ?? "dev");

    private static string? TemplateTextOf(LanguageModel model)
    {
        if (model.Source is GgufSource g && g.File.Find("tokenizer.chat_template") is { } v)
        {
            try { return v.AsString(); }
            catch (FitLMException) { } // an unreadable template: the name below, as /props is informational
        }
        return null;
    }

    private readonly object _logLock = new();

    /// <summary>The one line per request.</summary>
    public void LogRequest(string id, int promptTokens, int completionTokens, TimeSpan total, double decodeSeconds, FinishReason finish)
    {
        double tps = completionTokens > 1 && decodeSeconds > 0 ? (completionTokens - 1) / decodeSeconds : 0;
        string line = $"{DateTime.UtcNow:HH:mm:ss.fff} {id} prompt={promptTokens} completion={completionTokens} time={total.TotalSeconds:F3}s tok/s={tps:F1} finish={finish.ToString().ToLowerInvariant()}";
        lock (_logLock) (Options.Log ?? Console.Error).WriteLine(line);
    }

    /// <summary>A request that failed in the server (answered 500): one line with what failed.</summary>
    public void LogError(string method, string path, Exception e)
    {
        string line = $"{DateTime.UtcNow:HH:mm:ss.fff} error {method} {path}: {e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")}";
        lock (_logLock) (Options.Log ?? Console.Error).WriteLine(line);
    }

    private static long s_nextId;

    /// <summary>A request id as OpenAI shapes them: the kind's prefix, a counter and a random tail.</summary>
    public static string NewRequestId(string prefix) => $"{prefix}-{Interlocked.Increment(ref s_nextId):x6}{Random.Shared.Next(0x10000):x4}";

    /// <summary>Queues <paramref name="seq"/> for the scheduler and counts it, or answers 503 when the queue is full.</summary>
    public void Admit(Sequence seq)
    {
        if (!Scheduler.TryEnqueue(seq))
            throw new ApiException(503, "the server is busy: the request queue is full; retry shortly", "server_busy", "server_error") { RetryAfter = 1 };
        Metrics.RequestStarted();
        Metrics.PromptTokens(seq.Prompt.Length);
    }
}
