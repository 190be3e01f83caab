using System.Diagnostics;
using System.Text;
using System.Text.Json;
using FitLM.Chat;
using FitLM.Generation;
using Microsoft.AspNetCore.Http;

namespace FitLM.Server;

/// <summary>POST /v1/chat/completions and POST /v1/completions: validate, queue a <see cref="Sequence"/>, answer whole or as SSE.</summary>
internal sealed class GenerationEndpoints(ServerState state)
{
    private static long s_nextId;

    public async Task ChatAsync(HttpContext http)
    {
        var ct = http.RequestAborted;
        using var doc = await RequestReader.ReadJsonAsync(http.Request, state.Options.MaxBodyBytes, ct);
        var root = doc.RootElement;
        var p = RequestReader.ReadParams(root, state.Budget.Context);
        CheckModel(p.Model);
        var turns = ReadMessages(root);
        string rendered = state.Template.Render(turns);
        int[] prompt = state.Template.Tokenize(state.Model.Tokenizer, rendered);
        var stops = p.Stop.Concat(state.Template.StopStrings).ToArray();
        await RunAsync(http, p, prompt, stops, "chatcmpl", chat: true, ct);
    }

    public async Task CompletionAsync(HttpContext http)
    {
        var ct = http.RequestAborted;
        using var doc = await RequestReader.ReadJsonAsync(http.Request, state.Options.MaxBodyBytes, ct);
        var root = doc.RootElement;
        var p = RequestReader.ReadParams(root, state.Budget.Context);
        CheckModel(p.Model);
        await RunAsync(http, p, ReadPrompt(root), p.Stop, "cmpl", chat: false, ct);
    }

    private void CheckModel(string? model)
    {
        if (!state.Serves(model))
            throw new ApiException(404, $"the model '{model}' does not exist; this server runs '{state.ModelId}' (GET /v1/models)", "model_not_found");
    }

    private static List<ChatTurn> ReadMessages(JsonElement root)
    {
        if (!root.TryGetProperty("messages", out var messages) || messages.ValueKind == JsonValueKind.Null)
            throw ApiException.BadRequest("messages is missing: give an array of {role, content}", "missing_required_parameter");
        if (messages.ValueKind != JsonValueKind.Array) throw ApiException.BadRequest("messages must be an array of {role, content}");
        if (messages.GetArrayLength() == 0) throw ApiException.BadRequest("messages is empty: give at least one message");
        var turns = new List<ChatTurn>();
        int i = 0;
        foreach (var m in messages.EnumerateArray())
        {
            if (m.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest($"messages[{i}] must be an object with role and content");
            string role = RequestReader.OptionalString(m, "role") ?? throw ApiException.BadRequest($"messages[{i}].role is missing");
            if (role is not ("system" or "developer" or "user" or "assistant" or "tool"))
                throw ApiException.BadRequest($"messages[{i}].role '{role}' is not one of system, developer, user, assistant, tool");
            turns.Add(new ChatTurn(role == "developer" ? "system" : role, ReadContent(m, i)));
            i++;
        }
        return turns;
    }

    /// <summary>Content as a string, or an array of parts of which the text ones are joined; null (an assistant's tool call) is empty.</summary>
    private static string ReadContent(JsonElement m, int i)
    {
        if (!m.TryGetProperty("content", out var c) || c.ValueKind == JsonValueKind.Null) return "";
        if (c.ValueKind == JsonValueKind.String) return c.GetString()!;
        if (c.ValueKind != JsonValueKind.Array) throw ApiException.BadRequest($"messages[{i}].content must be a string or an array of parts");
        var sb = new StringBuilder();
        foreach (var part in c.EnumerateArray())
        {
            if (part.ValueKind != JsonValueKind.Object || RequestReader.OptionalString(part, "type") is not { } type)
                throw ApiException.BadRequest($"messages[{i}].content parts must be objects with a type");
            if (type != "text") throw ApiException.BadRequest($"messages[{i}].content: parts of type '{type}' are not supported (text only)");
            sb.Append(RequestReader.OptionalString(part, "text") ?? "");
        }
        return sb.ToString();
    }

    /// <summary>/v1/completions' prompt: a string, an array of one string, or an array of token ids.</summary>
    private int[] ReadPrompt(JsonElement root)
    {
        if (!root.TryGetProperty("prompt", out var prompt) || prompt.ValueKind == JsonValueKind.Null)
            throw ApiException.BadRequest("prompt is missing", "missing_required_parameter");
        var tok = state.Model.Tokenizer;
        if (prompt.ValueKind == JsonValueKind.String) return tok.Encode(prompt.GetString()!, addSpecial: true, parseSpecial: true);
        if (prompt.ValueKind != JsonValueKind.Array) throw ApiException.BadRequest("prompt must be a string, an array of one string, or an array of token ids");
        int n = prompt.GetArrayLength();
        if (n == 1 && prompt[0].ValueKind == JsonValueKind.String) return tok.Encode(prompt[0].GetString()!, addSpecial: true, parseSpecial: true);
        var ids = new int[n];
        for (int i = 0; i < n; i++)
        {
            if (prompt[i].ValueKind != JsonValueKind.Number || !prompt[i].TryGetInt32(out ids[i]))
                throw ApiException.BadRequest("prompt must be a string, an array of one string, or an array of token ids (one prompt per request)");
            if ((uint)ids[i] >= (uint)state.Model.Config.Vocab) throw ApiException.BadRequest($"prompt token {ids[i]} is outside the vocabulary ({state.Model.Config.Vocab})");
        }
        return ids;
    }

    private async Task RunAsync(HttpContext http, GenerationParams p, int[] prompt, string[] stops, string prefix, bool chat, CancellationToken ct)
    {
        int context = state.Budget.Context;
        if (prompt.Length == 0) throw ApiException.BadRequest("the prompt is empty (no tokens)");
        if (prompt.Length >= context)
            throw ApiException.BadRequest($"the prompt has {prompt.Length} tokens; the context holds {context} (and at least one generated token)", "context_length_exceeded");
        int maxTokens = Math.Min(p.MaxTokens ?? context, context - prompt.Length);
        // OpenAI's default temperature is 1; the rest of the sampler keeps llama.cpp's defaults (top-k 40, min-p 0.05).
        var sampling = new SamplingOptions { Temperature = p.Temperature, TopP = p.TopP, Seed = p.Seed };
        string id = $"{prefix}-{Interlocked.Increment(ref s_nextId):x6}{Random.Shared.Next(0x10000):x4}";
        var seq = new Sequence(id, prompt, maxTokens, sampling, stops, state.Model.Tokenizer, state.Model.Config.Vocab);
        var started = Stopwatch.StartNew();
        if (!state.Scheduler.TryEnqueue(seq))
            throw new ApiException(503, "the server is busy: the request queue is full; retry shortly", "server_busy", "server_error") { RetryAfter = 1 };
        state.Metrics.RequestStarted();
        state.Metrics.PromptTokens(prompt.Length);
        var finish = FinishReason.Cancelled;
        try
        {
            using var reg = ct.Register(() => state.Scheduler.Cancel(seq));
            finish = p.Stream ? await StreamAsync(http, seq, p, prefix, chat, ct) : await WholeAsync(http, seq, chat, ct);
        }
        catch (Exception e) when (e is OperationCanceledException or IOException)
        {
            finish = FinishReason.Cancelled; // the client went away
        }
        finally
        {
            state.Scheduler.Cancel(seq); // no-op when it finished; frees its slot and KV pages when the client left early
            if (finish == FinishReason.Error) state.Metrics.RequestFailed();
            double decode = seq.Generated > 0 ? (DateTime.UtcNow - seq.FirstToken).TotalSeconds : 0;
            state.LogRequest(id, prompt.Length, seq.Generated, started.Elapsed, decode, finish);
        }
    }

    private static string? OpenAiReason(FinishReason f) => f switch
    {
        FinishReason.Stop => "stop",
        FinishReason.Length => "length",
        _ => null,
    };

    private async Task<FinishReason> WholeAsync(HttpContext http, Sequence seq, bool chat, CancellationToken ct)
    {
        var text = new StringBuilder();
        var end = await Drain(seq, t => { text.Append(t); return Task.CompletedTask; }, ct);
        if (end.Finish == FinishReason.Error) throw new ApiException(500, end.Error ?? "generation failed", "generation_failed", "server_error");
        if (end.Finish == FinishReason.Cancelled) throw new ApiException(503, "the server is shutting down", "server_shutdown", "server_error");
        var usage = new Usage(seq.Prompt.Length, seq.Generated, seq.Prompt.Length + seq.Generated);
        long now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        if (chat)
            await Json(http, new ChatCompletion(seq.Id, "chat.completion", now, state.ModelId,
                [new ChatChoice(0, new ChatMessage("assistant", text.ToString()), OpenAiReason(end.Finish))], usage), JsonContext.Web.ChatCompletion, ct);
        else
            await Json(http, new TextCompletion(seq.Id, "text_completion", now, state.ModelId,
                [new TextChoice(0, text.ToString(), OpenAiReason(end.Finish))], usage), JsonContext.Web.TextCompletion, ct);
        return end.Finish;
    }

    private async Task<FinishReason> StreamAsync(HttpContext http, Sequence seq, GenerationParams p, string prefix, bool chat, CancellationToken ct)
    {
        var r = http.Response;
        r.ContentType = "text/event-stream";
        r.Headers.CacheControl = "no-cache";
        r.Headers["X-Accel-Buffering"] = "no";
        long now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        if (chat) await Send(http, Chunk(seq, now, new ChatDelta("assistant", ""), null, null), ct);
        var end = await Drain(seq, t => chat
            ? Send(http, Chunk(seq, now, new ChatDelta(null, t), null, null), ct)
            : Send(http, new TextCompletion(seq.Id, "text_completion", now, state.ModelId, [new TextChoice(0, t, null)], null), ct), ct);
        if (end.Finish == FinishReason.Error)
        {
            // Headers are gone; the error goes out as an event in OpenAI's shape, then the stream ends.
            await SendRaw(http, JsonSerializer.Serialize(new ErrorBody(new ErrorDetail(end.Error ?? "generation failed", "server_error", "generation_failed")), JsonContext.Web.ErrorBody), ct);
            return end.Finish;
        }
        if (end.Finish == FinishReason.Cancelled) return end.Finish;
        string? reason = OpenAiReason(end.Finish);
        if (chat) await Send(http, Chunk(seq, now, new ChatDelta(null, null), reason, null), ct);
        else await Send(http, new TextCompletion(seq.Id, "text_completion", now, state.ModelId, [new TextChoice(0, "", reason)], null), ct);
        if (p.IncludeUsage)
        {
            var usage = new Usage(seq.Prompt.Length, seq.Generated, seq.Prompt.Length + seq.Generated);
            if (chat) await Send(http, new ChatCompletionChunk(seq.Id, "chat.completion.chunk", now, state.ModelId, [], usage), ct);
            else await Send(http, new TextCompletion(seq.Id, "text_completion", now, state.ModelId, [], usage), ct);
        }
        await SendRaw(http, "[DONE]", ct);
        return end.Finish;
    }

    private ChatCompletionChunk Chunk(Sequence seq, long now, ChatDelta delta, string? finish, Usage? usage) =>
        new(seq.Id, "chat.completion.chunk", now, state.ModelId, [new ChatChunkChoice(0, delta, finish)], usage);

    /// <summary>Reads the sequence's events, passing text on, until its final event.</summary>
    private static async Task<SequenceEvent> Drain(Sequence seq, Func<string, Task> onText, CancellationToken ct)
    {
        await foreach (var e in seq.Events.ReadAllAsync(ct))
        {
            if (e.Finish != FinishReason.None) return e;
            if (e.Text.Length > 0) await onText(e.Text);
        }
        return new SequenceEvent("", FinishReason.Cancelled);
    }

    private static Task Send(HttpContext http, ChatCompletionChunk chunk, CancellationToken ct) =>
        SendRaw(http, JsonSerializer.Serialize(chunk, JsonContext.Web.ChatCompletionChunk), ct);

    private static Task Send(HttpContext http, TextCompletion chunk, CancellationToken ct) =>
        SendRaw(http, JsonSerializer.Serialize(chunk, JsonContext.Web.TextCompletion), ct);

    private static async Task SendRaw(HttpContext http, string data, CancellationToken ct)
    {
        await http.Response.WriteAsync("data: " + data + "\n\n", ct);
        await http.Response.Body.FlushAsync(ct);
    }

    internal static async Task Json<T>(HttpContext http, T value, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info, CancellationToken ct, int status = 200)
    {
        http.Response.StatusCode = status;
        http.Response.ContentType = "application/json";
        await JsonSerializer.SerializeAsync(http.Response.Body, value, info, ct);
    }
}
