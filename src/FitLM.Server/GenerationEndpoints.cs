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

    public async Task ChatAsync(HttpContext http)
    {
        var ct = http.RequestAborted;
        using var doc = await RequestReader.ReadJsonAsync(http.Request, state.Options.MaxBodyBytes, ct);
        var root = doc.RootElement;
        var p = RequestReader.ReadParams(root, chat: true);
        CheckModel(p.Model);
        var turns = ReadMessages(root);
        string rendered = state.Template.Render(turns);
        int[] prompt = state.Template.Tokenize(state.Model.Tokenizer, rendered);
        var stops = p.Stop.Concat(state.Template.StopStrings).ToArray();
        await RunAsync(http, p, prompt, stops, "chatcmpl", chat: true, echo: "", ct);
    }

    public async Task CompletionAsync(HttpContext http)
    {
        var ct = http.RequestAborted;
        using var doc = await RequestReader.ReadJsonAsync(http.Request, state.Options.MaxBodyBytes, ct);
        var root = doc.RootElement;
        var p = RequestReader.ReadParams(root, chat: false);
        CheckModel(p.Model);
        // Echo returns the prompt's text before the completion; the prompt's own logprobs are not computed.
        if (p.Echo && p.Logprobs >= 0) throw ApiException.BadRequest("echo with logprobs is not supported (the prompt's logprobs are not computed): send one of them", "unsupported_parameter");
        var (prompt, text) = ReadPrompt(root);
        await RunAsync(http, p, prompt, p.Stop, "cmpl", chat: false, echo: p.Echo ? text : "", ct);
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
            turns.Add(new ChatTurn(role == "developer" ? "system" : role, ReadContent(m, i, role)));
            i++;
        }
        return turns;
    }

    /// <summary>
    /// Content as a string, or an array of parts of which the text ones are joined. Missing or null only for an
    /// assistant's tool call (empty then): a user message without content used to be taken as empty and ran to the
    /// end of the context.
    /// </summary>
    private static string ReadContent(JsonElement m, int i, string role)
    {
        if (!m.TryGetProperty("content", out var c) || c.ValueKind == JsonValueKind.Null)
        {
            if (role == "assistant" && (HasValue(m, "tool_calls") || HasValue(m, "function_call"))) return "";
            throw ApiException.BadRequest($"messages[{i}].content is missing: a {role} message needs its text (a string or an array of text parts)", "missing_required_parameter");
        }
        if (c.ValueKind == JsonValueKind.String) return RequestReader.Text(c, $"messages[{i}].content");
        if (c.ValueKind != JsonValueKind.Array) throw ApiException.BadRequest($"messages[{i}].content must be a string or an array of parts");
        var sb = new StringBuilder();
        foreach (var part in c.EnumerateArray())
        {
            if (part.ValueKind != JsonValueKind.Object || RequestReader.OptionalString(part, "type") is not { } type)
                throw ApiException.BadRequest($"messages[{i}].content parts must be objects with a type");
            if (type != "text") throw ApiException.BadRequest($"messages[{i}].content: parts of type '{type}' are not supported (text only)");
            sb.Append(RequestReader.OptionalString(part, "text") ?? throw ApiException.BadRequest($"messages[{i}].content: a text part has no text", "missing_required_parameter"));
        }
        return sb.ToString();
    }

    private static bool HasValue(JsonElement o, string name) => o.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null;

    /// <summary>/v1/completions' prompt: a string, an array of one string, or an array of token ids; with its text (for echo).</summary>
    private (int[] Ids, string Text) ReadPrompt(JsonElement root)
    {
        if (!root.TryGetProperty("prompt", out var prompt) || prompt.ValueKind == JsonValueKind.Null)
            throw ApiException.BadRequest("prompt is missing", "missing_required_parameter");
        var tok = state.Model.Tokenizer;
        if (prompt.ValueKind == JsonValueKind.String)
        {
            string text = RequestReader.Text(prompt, "prompt");
            return (tok.Encode(text, addSpecial: true, parseSpecial: true), text);
        }
        if (prompt.ValueKind != JsonValueKind.Array) throw ApiException.BadRequest("prompt must be a string, an array of one string, or an array of token ids");
        int n = prompt.GetArrayLength();
        if (n == 1 && prompt[0].ValueKind == JsonValueKind.String)
        {
            string text = RequestReader.Text(prompt[0], "prompt[0]");
            return (tok.Encode(text, addSpecial: true, parseSpecial: true), text);
        }
        var ids = new int[n];
        for (int i = 0; i < n; i++)
        {
            if (prompt[i].ValueKind != JsonValueKind.Number || !prompt[i].TryGetInt32(out ids[i]))
                throw ApiException.BadRequest("prompt must be a string, an array of one string, or an array of token ids (one prompt per request)");
            if ((uint)ids[i] >= (uint)state.Model.Config.Vocab) throw ApiException.BadRequest($"prompt token {ids[i]} is outside the vocabulary ({state.Model.Config.Vocab})");
        }
        return (ids, tok.Decode(ids));
    }

    private async Task RunAsync(HttpContext http, GenerationParams p, int[] prompt, string[] stops, string prefix, bool chat, string echo, CancellationToken ct)
    {
        int context = state.Budget.Context;
        if (prompt.Length == 0) throw ApiException.BadRequest("the prompt is empty (no tokens)");
        if (prompt.Length >= context)
            throw ApiException.BadRequest($"the prompt has {prompt.Length} tokens; the context holds {context} (and at least one generated token)", "context_length_exceeded");
        // max_tokens beyond what fits is clamped to it, as llama.cpp and vLLM do; finish_reason is then "length".
        int maxTokens = Math.Min(p.MaxTokens ?? context, context - prompt.Length);
        // OpenAI's default temperature is 1; the rest of the sampler keeps llama.cpp's defaults (top-k 40, min-p 0.05).
        var sampling = new SamplingOptions
        {
            Temperature = p.Temperature, TopP = p.TopP, TopK = p.TopK, MinP = p.MinP, RepeatPenalty = p.RepeatPenalty, RepeatLastN = p.RepeatLastN,
            FrequencyPenalty = p.FrequencyPenalty, PresencePenalty = p.PresencePenalty, LogitBias = p.LogitBias, Seed = p.Seed, IgnoreEos = p.IgnoreEos,
        };
        string id = ServerState.NewRequestId(prefix);
        Sequence seq;
        try { seq = new Sequence(id, prompt, maxTokens, context, sampling, stops, state.Model.Tokenizer, state.Model.Config.Vocab, p.Logprobs); }
        catch (FitLMException e) { throw ApiException.BadRequest(e.Message); } // e.g. a logit_bias token outside the vocabulary
        var started = Stopwatch.StartNew();
        state.Admit(seq);
        var finish = FinishReason.Cancelled;
        try
        {
            using var reg = ct.Register(() => state.Scheduler.Cancel(seq));
            var shape = new LogprobShapes(state.Model.Tokenizer);
            finish = p.Stream ? await StreamAsync(http, seq, p, chat, echo, shape, ct) : await WholeAsync(http, seq, p, chat, echo, shape, ct);
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

    private async Task<FinishReason> WholeAsync(HttpContext http, Sequence seq, GenerationParams p, bool chat, string echo, LogprobShapes shape, CancellationToken ct)
    {
        var text = new StringBuilder(echo);
        var logprobs = p.Logprobs >= 0 ? new List<TokenLogprob>() : null;
        var end = await Drain(seq, e =>
        {
            text.Append(e.Text);
            if (e.Logprobs != null) logprobs?.AddRange(e.Logprobs);
            return Task.CompletedTask;
        }, ct);
        if (end.Finish == FinishReason.Error) throw new ApiException(500, end.Error ?? "generation failed", "generation_failed", "server_error");
        if (end.Finish == FinishReason.Cancelled) throw new ApiException(503, "the server is shutting down", "server_shutdown", "server_error");
        var usage = new Usage(seq.Prompt.Length, seq.Generated, seq.Prompt.Length + seq.Generated);
        long now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        if (chat)
            await Json(http, new ChatCompletion(seq.Id, "chat.completion", now, state.ModelId,
                [new ChatChoice(0, new ChatMessage("assistant", text.ToString()), logprobs != null ? shape.Chat(logprobs) : null, OpenAiReason(end.Finish))], usage),
                JsonContext.Web.ChatCompletion, ct);
        else
            await Json(http, new TextCompletion(seq.Id, "text_completion", now, state.ModelId,
                [new TextChoice(0, text.ToString(), logprobs != null ? shape.Text(logprobs, echo.Length) : null, OpenAiReason(end.Finish))], usage),
                JsonContext.Web.TextCompletion, ct);
        return end.Finish;
    }

    private async Task<FinishReason> StreamAsync(HttpContext http, Sequence seq, GenerationParams p, bool chat, string echo, LogprobShapes shape, CancellationToken ct)
    {
        var r = http.Response;
        r.ContentType = "text/event-stream";
        r.Headers.CacheControl = "no-cache";
        r.Headers["X-Accel-Buffering"] = "no";
        long now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        if (chat) await Send(http, Chunk(seq, now, new ChatDelta("assistant", ""), null, null), ct);
        else if (echo.Length > 0) await Send(http, new TextCompletion(seq.Id, "text_completion", now, state.ModelId, [new TextChoice(0, echo, null, null)], null), ct);
        bool withLogprobs = p.Logprobs >= 0;
        var end = await Drain(seq, e => chat
            ? Send(http, Chunk(seq, now, new ChatDelta(null, e.Text), withLogprobs ? shape.Chat(e.Logprobs ?? []) : null, null), ct)
            : Send(http, new TextCompletion(seq.Id, "text_completion", now, state.ModelId,
                [new TextChoice(0, e.Text, withLogprobs ? shape.Text(e.Logprobs ?? [], echo.Length) : null, null)], null), ct), ct);
        if (end.Finish == FinishReason.Error)
        {
            // Headers are gone; the error goes out as an event in OpenAI's shape, then the stream ends.
            await SendRaw(http, JsonSerializer.Serialize(new ErrorBody(new ErrorDetail(end.Error ?? "generation failed", "server_error", "generation_failed")), JsonContext.Web.ErrorBody), ct);
            return end.Finish;
        }
        if (end.Finish == FinishReason.Cancelled) return end.Finish;
        string? reason = OpenAiReason(end.Finish);
        if (chat) await Send(http, Chunk(seq, now, new ChatDelta(null, null), null, reason), ct);
        else await Send(http, new TextCompletion(seq.Id, "text_completion", now, state.ModelId, [new TextChoice(0, "", null, reason)], null), ct);
        if (p.IncludeUsage)
        {
            var usage = new Usage(seq.Prompt.Length, seq.Generated, seq.Prompt.Length + seq.Generated);
            if (chat) await Send(http, new ChatCompletionChunk(seq.Id, "chat.completion.chunk", now, state.ModelId, [], usage), ct);
            else await Send(http, new TextCompletion(seq.Id, "text_completion", now, state.ModelId, [], usage), ct);
        }
        await SendRaw(http, "[DONE]", ct);
        return end.Finish;
    }

    private ChatCompletionChunk Chunk(Sequence seq, long now, ChatDelta delta, ChatLogprobs? logprobs, string? finish) =>
        new(seq.Id, "chat.completion.chunk", now, state.ModelId, [new ChatChunkChoice(0, delta, logprobs, finish)], null);

    /// <summary>Reads the sequence's events, passing text (and logprobs) on, until its final event.</summary>
    internal static async Task<SequenceEvent> Drain(Sequence seq, Func<SequenceEvent, Task> onText, CancellationToken ct)
    {
        await foreach (var e in seq.Events.ReadAllAsync(ct))
        {
            if (e.Finish != FinishReason.None) return e;
            if (e.Text.Length > 0 || e.Logprobs != null) await onText(e);
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
