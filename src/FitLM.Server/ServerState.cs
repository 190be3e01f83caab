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

    private readonly object _logLock = new();

    /// <summary>The one line per request.</summary>
    public void LogRequest(string id, int promptTokens, int completionTokens, TimeSpan total, double decodeSeconds, FinishReason finish)
    {
        double tps = completionTokens > 1 && decodeSeconds > 0 ? (completionTokens - 1) / decodeSeconds : 0;
        string line = $"{DateTime.UtcNow:HH:mm:ss.fff} {id} prompt={promptTokens} completion={completionTokens} time={total.TotalSeconds:F3}s tok/s={tps:F1} finish={finish.ToString().ToLowerInvariant()}";
        lock (_logLock) (Options.Log ?? Console.Error).WriteLine(line);
    }
}
