using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using FitLM.Adaptation;
using FitLM.Model;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace FitLM.Server;

/// <summary>
/// The OpenAI-compatible server over one loaded model: Kestrel with minimal APIs, a <see cref="Scheduler"/> that
/// batches all requests through the model, and a <see cref="KvBudget"/> that keeps their KV within the memory
/// budget. <see cref="Start"/> returns once it listens; <see cref="Address"/> is where (port 0 picks one).
/// </summary>
public sealed class FitLMServer : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly Scheduler _scheduler;
    private IMemoryLever? _lever;
    private LanguageModel? _model;

    public Uri Address { get; }
    public ServerMetrics Metrics { get; }
    public KvBudget Budget { get; }
    public Scheduler Scheduler => _scheduler;

    /// <summary>Wakes the scheduler so a budget asked for is applied now rather than at its next pass or idle tick.</summary>
    public void WakeScheduler() => _scheduler.Wake();

    private FitLMServer(WebApplication app, Scheduler scheduler, Uri address, ServerMetrics metrics, KvBudget budget)
    {
        _app = app;
        _scheduler = scheduler;
        Address = address;
        Metrics = metrics;
        Budget = budget;
    }

    /// <summary>Starts serving <paramref name="model"/> (loaded with LoadOptions.LogitRows = Parallel, so the plan counts every slot's logits).</summary>
    public static async Task<FitLMServer> StartAsync(LanguageModel model, ServerOptions options, CancellationToken ct = default)
    {
        options.Validate();
        var budget = new KvBudget(model, options.Parallel);
        var metrics = new ServerMetrics();
        var scheduler = new Scheduler(model, budget, metrics, options);
        var lever = new ServerBatchLever(budget, scheduler);
        try
        {
            model.Governor.Add(lever); // the most expensive lever: after the model's own
            var state = new ServerState(model, options, scheduler, budget, metrics);
            var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [], ContentRootPath = AppContext.BaseDirectory });
            builder.Logging.ClearProviders(); // the server logs one line per request itself
            builder.WebHost.UseKestrel(k =>
            {
                k.AddServerHeader = false;
                k.Limits.MaxRequestBodySize = options.MaxBodyBytes;
                if (IPAddress.TryParse(options.Host, out var ip)) k.Listen(ip, options.Port);
                else if (options.Host == "localhost") k.ListenLocalhost(options.Port);
                else throw new FitLMException($"--host {options.Host} is not an IP address (e.g. 127.0.0.1, 0.0.0.0, ::1) or localhost");
            });
            var app = builder.Build();
            app.Use((http, next) => Guard(http, next, state));
            var gen = new GenerationEndpoints(state);
            var info = new InfoEndpoints(state);
            var embeddings = new EmbeddingEndpoints(state);
            app.MapPost("/v1/chat/completions", gen.ChatAsync);
            app.MapPost("/v1/completions", gen.CompletionAsync);
            app.MapPost("/v1/embeddings", embeddings.EmbeddingsAsync);
            app.MapGet("/v1/models", info.ModelsAsync);
            // A catch-all parameter: the id is a file name ("model.gguf") and may hold a slash ("org/model").
            app.MapGet("/v1/models/{**id}", (HttpContext http, string id) => info.ModelAsync(http, id));
            app.MapGet("/props", info.PropsAsync);
            app.MapGet("/health", info.HealthAsync);
            app.MapGet("/metrics", info.MetricsAsync);
            app.MapPost("/tokenize", info.TokenizeAsync);
            app.MapPost("/detokenize", info.DetokenizeAsync);
            var budgetEndpoints = new BudgetEndpoints(state);
            app.MapGet("/budget", budgetEndpoints.GetAsync);
            app.MapPost("/budget", budgetEndpoints.PostAsync);
            // "{**path}", not MapFallback's default "{*path:nonfile}", which skips paths that look like file names
            // (".../model.gguf") and left them an empty 404.
            app.MapFallback("{**path}", (HttpContext http) => NotFound(http));
            try
            {
                await app.StartAsync(ct);
            }
            catch (IOException e)
            {
                throw new FitLMException($"cannot listen on {options.Host}:{options.Port}: {e.Message}");
            }
            var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            return new FitLMServer(app, scheduler, new Uri(address.Replace("[::]", "localhost")), metrics, budget) { _lever = lever, _model = model };
        }
        catch
        {
            model.Governor.Remove(lever);
            scheduler.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Every request: the API key where one is set (all but /health and /metrics, as llama.cpp does), then errors
    /// to OpenAI's JSON shape.
    /// </summary>
    private static async Task Guard(HttpContext http, RequestDelegate next, ServerState state)
    {
        try
        {
            string path = http.Request.Path.Value ?? "";
            if (state.Options.ApiKey is { } key && path is not ("/health" or "/metrics") && !Authorized(http, key))
                throw new ApiException(401, "invalid or missing API key: send 'Authorization: Bearer KEY'", "invalid_api_key");
            state.Options.BeforeEndpoint?.Invoke(http);
            await next(http);
            // A status set without a body (routing's 405, anything else the framework answers itself) gets the error shape too.
            if (!http.Response.HasStarted && http.Response.StatusCode >= 400 && http.Response.ContentType == null)
                await Error(http, state, new ApiException(http.Response.StatusCode, $"{http.Request.Method} {http.Request.Path} failed with HTTP {http.Response.StatusCode}", "http_" + http.Response.StatusCode));
        }
        catch (ApiException e) { await Error(http, state, e); }
        catch (FitLMException e) { await Error(http, state, ApiException.BadRequest(e.Message)); }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            await Error(http, state, new ApiException(413, "the request body is too large", "request_too_large"));
        }
        catch (BadHttpRequestException e)
        {
            await Error(http, state, new ApiException(e.StatusCode, $"bad HTTP request: {e.Message}", "bad_request"));
        }
        catch (Exception e) when (e is OperationCanceledException or IOException && http.RequestAborted.IsCancellationRequested) { }
        catch (Exception e)
        {
            // Anything else is the server's fault: never an empty 500. Logged, counted, answered in OpenAI's shape.
            state.LogError(http.Request.Method, http.Request.Path, e);
            state.Metrics.InternalError();
            await Error(http, state, new ApiException(500, $"internal server error: {e.Message}", "internal_error", "server_error"), rejected: false);
        }
    }

    private static Task NotFound(HttpContext http) =>
        throw new ApiException(404, $"no endpoint {http.Request.Method} {http.Request.Path}", "not_found");

    private static bool Authorized(HttpContext http, string key)
    {
        string? header = http.Request.Headers.Authorization;
        if (header == null || !header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase)) return false;
        return CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(header[7..].Trim()), Encoding.UTF8.GetBytes(key));
    }

    private static async Task Error(HttpContext http, ServerState state, ApiException e, bool rejected = true)
    {
        if (rejected) state.Metrics.RequestRejected();
        if (http.Response.HasStarted) return;
        http.Response.Clear();
        if (e.RetryAfter is { } s) http.Response.Headers.RetryAfter = s.ToString();
        if (e.Status == 401) http.Response.Headers.WWWAuthenticate = "Bearer";
        await GenerationEndpoints.Json(http, new ErrorBody(new ErrorDetail(e.Message, e.Type, e.Code)), JsonContext.Web.ErrorBody, CancellationToken.None, e.Status);
    }

    /// <summary>Runs until <paramref name="ct"/> is cancelled (Ctrl+C in `fitlm serve`) or the host is told to stop (SIGTERM).</summary>
    public async Task WaitAsync(CancellationToken ct)
    {
        // The host's console lifetime turns SIGTERM into ApplicationStopping and holds the process until it stops.
        using var either = CancellationTokenSource.CreateLinkedTokenSource(ct, _app.Lifetime.ApplicationStopping);
        try { await Task.Delay(Timeout.Infinite, either.Token); }
        catch (OperationCanceledException) { }
    }

    public async ValueTask DisposeAsync()
    {
        if (_lever != null) _model!.Governor.Remove(_lever);
        _scheduler.Dispose();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        await _app.StopAsync(timeout.Token);
        await _app.DisposeAsync();
    }
}
