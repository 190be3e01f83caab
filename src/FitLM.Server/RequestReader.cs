using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace FitLM.Server;

/// <summary>The sampling and stopping parameters common to /v1/chat/completions and /v1/completions, validated.</summary>
public sealed record GenerationParams
{
    public string? Model { get; init; }
    /// <summary>null: until end of generation or the end of the context; larger than what fits: clamped to it.</summary>
    public int? MaxTokens { get; init; }
    public float Temperature { get; init; } = 1f;
    public float TopP { get; init; } = 1f;
    // llama.cpp's server extensions, with its defaults.
    public int TopK { get; init; } = 40;
    public float MinP { get; init; } = 0.05f;
    public float RepeatPenalty { get; init; } = 1f;
    public int RepeatLastN { get; init; } = 64;
    public float FrequencyPenalty { get; init; }
    public float PresencePenalty { get; init; }
    public IReadOnlyDictionary<int, float>? LogitBias { get; init; }
    public int Seed { get; init; } = -1;
    /// <summary>llama.cpp's ignore_eos: never sample an end-of-generation token.</summary>
    public bool IgnoreEos { get; init; }
    public string[] Stop { get; init; } = [];
    public bool Stream { get; init; }
    public bool IncludeUsage { get; init; }
    /// <summary>-1: no logprobs; 0: the sampled tokens'; N: and the N most likely tokens at each step.</summary>
    public int Logprobs { get; init; } = -1;
    /// <summary>/v1/completions: the prompt's text goes before the completion.</summary>
    public bool Echo { get; init; }
}

/// <summary>
/// Reads a JSON request body safely: size limit (413), valid UTF-8 and well-formed JSON (400), then typed
/// fields with a 400 naming the field for every wrong type or out-of-range value.
/// </summary>
public static class RequestReader
{
    public static async Task<JsonDocument> ReadJsonAsync(HttpRequest request, long limit, CancellationToken ct)
    {
        if (request.ContentLength > limit) throw TooLarge(limit);
        var buffer = new MemoryStream();
        var chunk = new byte[16 * 1024];
        try
        {
            while (true)
            {
                int read = await request.Body.ReadAsync(chunk, ct);
                if (read == 0) break;
                if (buffer.Length + read > limit) throw TooLarge(limit);
                buffer.Write(chunk, 0, read);
            }
        }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge) { throw TooLarge(limit); }
        var bytes = buffer.GetBuffer().AsSpan(0, (int)buffer.Length);
        if (bytes.Length == 0) throw ApiException.BadRequest("the request body is empty; send a JSON object", "invalid_json");
        if (!System.Text.Unicode.Utf8.IsValid(bytes)) throw ApiException.BadRequest("the request body is not valid UTF-8", "invalid_encoding");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(buffer.GetBuffer().AsMemory(0, (int)buffer.Length), new JsonDocumentOptions { MaxDepth = 64 });
        }
        catch (JsonException e)
        {
            throw ApiException.BadRequest($"the request body is not valid JSON: {e.Message}", "invalid_json");
        }
        try
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest("the request body must be a JSON object", "invalid_json");
            CheckText(doc.RootElement, "");
        }
        catch
        {
            doc.Dispose();
            throw;
        }
        return doc;
    }

    /// <summary>
    /// Every string and key of the body must be Unicode text. JSON may escape a lone UTF-16 surrogate ("\ud800"),
    /// which is not: reading such a string throws, anywhere a handler looks (even at a key it only compares), and
    /// came back as an empty 500. Checked once here, it is a 400 naming where it is.
    /// </summary>
    private static void CheckText(JsonElement e, string path)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.String:
                Text(e, path.Length == 0 ? "the body" : path);
                break;
            case JsonValueKind.Array:
                int i = 0;
                foreach (var item in e.EnumerateArray()) CheckText(item, $"{path}[{i++}]");
                break;
            case JsonValueKind.Object:
                foreach (var p in e.EnumerateObject())
                {
                    string name = PropertyName(p, path.Length == 0 ? "the body" : path);
                    CheckText(p.Value, path.Length == 0 ? name : $"{path}.{name}");
                }
                break;
        }
    }

    private static ApiException TooLarge(long limit) =>
        new(413, $"the request body is larger than {limit} bytes", "request_too_large");

    /// <summary>Most top_logprobs per token (OpenAI's limit).</summary>
    public const int MaxTopLogprobs = 20;

    /// <summary>
    /// The parameters both generation endpoints share (<paramref name="chat"/>: /v1/chat/completions' logprobs
    /// shape, else /v1/completions' logprobs, echo and best_of). Fields that would change the result and are not
    /// implemented are refused by name rather than ignored.
    /// </summary>
    public static GenerationParams ReadParams(JsonElement root, bool chat)
    {
        RefuseUnsupported(root, chat);
        long? max = OptionalLong(root, "max_completion_tokens") ?? OptionalLong(root, "max_tokens");
        if (max is { } m && m < 1) throw ApiException.BadRequest($"max_tokens {m} is out of range (1 or more; larger than the context is clamped to what fits)");
        if (max == null && OptionalLong(root, "n_predict") is { } np && np >= 0) max = Math.Max(1, np); // llama.cpp's name; -1 = no limit
        float temperature = OptionalFloat(root, "temperature") ?? 1f;
        if (temperature is < 0 or > 2) throw ApiException.BadRequest($"temperature {temperature} is out of range [0, 2]");
        float topP = OptionalFloat(root, "top_p") ?? 1f;
        if (!(topP is > 0 and <= 1)) throw ApiException.BadRequest($"top_p {topP} is out of range (0, 1]");
        int topK = OptionalInt(root, "top_k") ?? 40;
        if (topK < 0) throw ApiException.BadRequest($"top_k {topK} is out of range (0 or more; 0 disables it)");
        float minP = OptionalFloat(root, "min_p") ?? 0.05f;
        if (!(minP is >= 0 and <= 1)) throw ApiException.BadRequest($"min_p {minP} is out of range [0, 1]");
        float repeat = OptionalFloat(root, "repeat_penalty") ?? 1f;
        if (!(repeat is > 0 and <= 10)) throw ApiException.BadRequest($"repeat_penalty {repeat} is out of range (0, 10]");
        int repeatLastN = OptionalInt(root, "repeat_last_n") ?? 64;
        if (repeatLastN < 0) throw ApiException.BadRequest($"repeat_last_n {repeatLastN} is out of range (0 or more)");
        float frequency = OptionalFloat(root, "frequency_penalty") ?? 0f;
        if (!(frequency is >= -2 and <= 2)) throw ApiException.BadRequest($"frequency_penalty {frequency} is out of range [-2, 2]");
        float presence = OptionalFloat(root, "presence_penalty") ?? 0f;
        if (!(presence is >= -2 and <= 2)) throw ApiException.BadRequest($"presence_penalty {presence} is out of range [-2, 2]");
        if (OptionalInt(root, "n") is { } n && n != 1) throw ApiException.BadRequest($"n {n} is not supported: only one choice per request (n = 1)");
        long? seed = OptionalLong(root, "seed");
        bool includeUsage = false;
        if (root.TryGetProperty("stream_options", out var so) && so.ValueKind != JsonValueKind.Null)
        {
            if (so.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest("stream_options must be an object");
            includeUsage = OptionalBool(so, "include_usage") ?? false;
        }
        return new GenerationParams
        {
            Model = OptionalString(root, "model"),
            Stream = OptionalBool(root, "stream") ?? false,
            MaxTokens = max is { } x ? (int)Math.Min(x, int.MaxValue) : null,
            Temperature = temperature,
            TopP = topP,
            TopK = topK,
            MinP = minP,
            RepeatPenalty = repeat,
            RepeatLastN = repeatLastN,
            FrequencyPenalty = frequency,
            PresencePenalty = presence,
            LogitBias = ReadLogitBias(root),
            // Seeds are 64-bit in OpenAI's API; the sampler's Random takes 32 bits, non-negative (-1 = random).
            Seed = seed is { } s ? (int)((ulong)s % int.MaxValue) : -1,
            Stop = ReadStop(root),
            IncludeUsage = includeUsage,
            Logprobs = chat ? ReadChatLogprobs(root) : ReadTextLogprobs(root),
            Echo = !chat && (OptionalBool(root, "echo") ?? false),
            // llama.cpp's server field: the end-of-generation tokens are never sampled (benchmarks, fixed-length runs).
            IgnoreEos = OptionalBool(root, "ignore_eos") ?? false,
        };
    }

    /// <summary>Chat: logprobs (bool) and top_logprobs (0..20, only with logprobs).</summary>
    private static int ReadChatLogprobs(JsonElement root)
    {
        bool on = OptionalBool(root, "logprobs") ?? false;
        int? top = OptionalInt(root, "top_logprobs");
        if (top is { } t && (t < 0 || t > MaxTopLogprobs)) throw ApiException.BadRequest($"top_logprobs {t} is out of range (0..{MaxTopLogprobs})");
        if (top is > 0 && !on) throw ApiException.BadRequest("top_logprobs needs logprobs: true");
        return on ? top ?? 0 : -1;
    }

    /// <summary>Completions: logprobs is the number of top tokens (0..20) per position.</summary>
    private static int ReadTextLogprobs(JsonElement root)
    {
        if (!root.TryGetProperty("logprobs", out var v) || v.ValueKind is JsonValueKind.Null or JsonValueKind.False) return -1;
        int n = OptionalInt(root, "logprobs") ?? -1;
        if (n < 0 || n > MaxTopLogprobs) throw ApiException.BadRequest($"logprobs {n} is out of range (0..{MaxTopLogprobs}: the most likely tokens to return per position)");
        return n;
    }

    /// <summary>logit_bias: {"token id": bias in [-100, 100]}.</summary>
    private static Dictionary<int, float>? ReadLogitBias(JsonElement root)
    {
        if (!root.TryGetProperty("logit_bias", out var lb) || lb.ValueKind == JsonValueKind.Null) return null;
        if (lb.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest("logit_bias must be an object mapping token ids to biases");
        var bias = new Dictionary<int, float>();
        foreach (var p in lb.EnumerateObject())
        {
            string key = PropertyName(p, "logit_bias");
            if (!int.TryParse(key, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int id))
                throw ApiException.BadRequest($"logit_bias key '{Cap(key)}' is not a token id");
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetDouble(out double b) || !(b is >= -100 and <= 100))
                throw ApiException.BadRequest($"logit_bias for token {id} must be a number in [-100, 100]");
            bias[id] = (float)b;
        }
        return bias.Count > 0 ? bias : null;
    }

    /// <summary>
    /// Fields that change what comes back, which this server does not implement: refused by name (a client that
    /// sent them would otherwise get a different result than it asked for, silently). Their neutral values pass.
    /// </summary>
    private static void RefuseUnsupported(JsonElement root, bool chat)
    {
        static bool Given(JsonElement root, string name, out JsonElement v) =>
            root.TryGetProperty(name, out v) && v.ValueKind != JsonValueKind.Null;
        void Refuse(string name, string why) => throw ApiException.BadRequest($"{name} is not supported: {why}", "unsupported_parameter");

        if (Given(root, "tools", out var tools) && !(tools.ValueKind == JsonValueKind.Array && tools.GetArrayLength() == 0)) Refuse("tools", "this server does not call tools");
        if (Given(root, "functions", out var fns) && !(fns.ValueKind == JsonValueKind.Array && fns.GetArrayLength() == 0)) Refuse("functions", "this server does not call functions");
        foreach (var name in new[] { "tool_choice", "function_call" })
            if (Given(root, name, out var v) && !(v.ValueKind == JsonValueKind.String && Text(v, name) is "none" or "auto")) Refuse(name, "this server does not call tools");
        if (Given(root, "response_format", out var rf) &&
            !(rf.ValueKind == JsonValueKind.Object && rf.TryGetProperty("type", out var rt) && rt.ValueKind == JsonValueKind.String && Text(rt, "response_format.type") == "text"))
            Refuse("response_format", "only {\"type\": \"text\"} (no JSON mode or schema)");
        if (Given(root, "modalities", out var mod) &&
            !(mod.ValueKind == JsonValueKind.Array && mod.EnumerateArray().All(x => x.ValueKind == JsonValueKind.String && Text(x, "modalities") == "text")))
            Refuse("modalities", "text only");
        foreach (var name in new[] { "audio", "reasoning_effort", "web_search_options", "grammar", "json_schema" })
            if (Given(root, name, out _)) Refuse(name, "it would change the output and this server does not implement it");
        if (!chat)
        {
            if (OptionalInt(root, "best_of") is { } b && b != 1) Refuse("best_of", "one completion per request (best_of = 1)");
            if (OptionalString(root, "suffix") is { Length: > 0 }) Refuse("suffix", "no fill-in-the-middle");
        }
        // llama.cpp sampler options this server does not have, at values that would change the draw.
        if (OptionalInt(root, "mirostat") is { } mi && mi != 0) Refuse("mirostat", "top_k, top_p, min_p and temperature only");
        if (OptionalFloat(root, "typical_p") is { } tp && tp != 1) Refuse("typical_p", "top_k, top_p, min_p and temperature only");
        if (OptionalInt(root, "n_probs") is { } np && np != 0) Refuse("n_probs", "use logprobs (and top_logprobs in chat)");
    }

    private static string[] ReadStop(JsonElement root)
    {
        if (!root.TryGetProperty("stop", out var stop) || stop.ValueKind == JsonValueKind.Null) return [];
        if (stop.ValueKind == JsonValueKind.String) return [Text(stop, "stop")];
        if (stop.ValueKind != JsonValueKind.Array) throw ApiException.BadRequest("stop must be a string or an array of strings");
        if (stop.GetArrayLength() > 16) throw ApiException.BadRequest("stop has more than 16 strings");
        var list = new List<string>();
        foreach (var s in stop.EnumerateArray())
        {
            if (s.ValueKind != JsonValueKind.String) throw ApiException.BadRequest("stop must be a string or an array of strings");
            list.Add(Text(s, $"stop[{list.Count}]"));
        }
        return list.ToArray();
    }

    public static string? OptionalString(JsonElement o, string name)
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.String ? Text(v, name) : throw ApiException.BadRequest($"{name} must be a string");
    }

    /// <summary>
    /// A JSON string's text. JSON may escape a lone UTF-16 surrogate ("\ud800"), which is no Unicode text: reading
    /// it throws, so it becomes a 400 naming <paramref name="name"/> (it used to be an empty 500).
    /// </summary>
    public static string Text(JsonElement v, string name)
    {
        try { return v.GetString()!; }
        catch (InvalidOperationException) { throw LoneSurrogate(name); }
    }

    /// <summary>An object member's name, with the same check as <see cref="Text"/>.</summary>
    public static string PropertyName(JsonProperty p, string where)
    {
        try { return p.Name; }
        catch (InvalidOperationException) { throw LoneSurrogate($"a key of {where}"); }
    }

    private static ApiException LoneSurrogate(string name) =>
        ApiException.BadRequest($"{name} is not valid Unicode text: it has an unpaired UTF-16 surrogate escape such as \\ud800", "invalid_encoding");

    /// <summary>User text quoted in an error message: at most 64 characters.</summary>
    public static string Cap(string s) => s.Length <= 64 ? s : s[..64] + "…";

    public static bool? OptionalBool(JsonElement o, string name)
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw ApiException.BadRequest($"{name} must be true or false"),
        };
    }

    public static int? OptionalInt(JsonElement o, string name)
    {
        long? v = OptionalLong(o, name);
        if (v is { } x && (x < int.MinValue || x > int.MaxValue)) throw ApiException.BadRequest($"{name} {x} is out of range");
        return (int?)v;
    }

    public static long? OptionalLong(JsonElement o, string name)
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out long x)) return x;
        throw ApiException.BadRequest($"{name} must be an integer");
    }

    public static float? OptionalFloat(JsonElement o, string name)
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double x) && double.IsFinite(x)) return (float)x;
        throw ApiException.BadRequest($"{name} must be a number");
    }
}
