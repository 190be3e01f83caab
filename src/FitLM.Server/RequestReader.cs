using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace FitLM.Server;

/// <summary>The sampling and stopping parameters common to /v1/chat/completions and /v1/completions, validated.</summary>
public sealed record GenerationParams
{
    public string? Model { get; init; }
    /// <summary>null: until end of generation or the end of the context.</summary>
    public int? MaxTokens { get; init; }
    public float Temperature { get; init; } = 1f;
    public float TopP { get; init; } = 1f;
    public int Seed { get; init; } = -1;
    public string[] Stop { get; init; } = [];
    public bool Stream { get; init; }
    public bool IncludeUsage { get; init; }
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
        if (doc.RootElement.ValueKind != JsonValueKind.Object)
        {
            doc.Dispose();
            throw ApiException.BadRequest("the request body must be a JSON object", "invalid_json");
        }
        return doc;
    }

    private static ApiException TooLarge(long limit) =>
        new(413, $"the request body is larger than {limit} bytes", "request_too_large");

    /// <summary>The parameters both generation endpoints share. <paramref name="context"/> bounds max_tokens.</summary>
    public static GenerationParams ReadParams(JsonElement root, int context)
    {
        var p = new GenerationParams
        {
            Model = OptionalString(root, "model"),
            Stream = OptionalBool(root, "stream") ?? false,
        };
        int? max = OptionalInt(root, "max_completion_tokens") ?? OptionalInt(root, "max_tokens");
        if (max is { } m && (m < 1 || m > context))
            throw ApiException.BadRequest($"max_tokens {m} is out of range (1..{context}, the context)");
        float temperature = OptionalFloat(root, "temperature") ?? 1f;
        if (temperature is < 0 or > 2) throw ApiException.BadRequest($"temperature {temperature} is out of range [0, 2]");
        float topP = OptionalFloat(root, "top_p") ?? 1f;
        if (!(topP is > 0 and <= 1)) throw ApiException.BadRequest($"top_p {topP} is out of range (0, 1]");
        if (OptionalInt(root, "n") is { } n && n != 1) throw ApiException.BadRequest($"n {n} is not supported: only one choice per request (n = 1)");
        long? seed = OptionalLong(root, "seed");
        bool includeUsage = false;
        if (root.TryGetProperty("stream_options", out var so) && so.ValueKind != JsonValueKind.Null)
        {
            if (so.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest("stream_options must be an object");
            includeUsage = OptionalBool(so, "include_usage") ?? false;
        }
        return p with
        {
            MaxTokens = max,
            Temperature = temperature,
            TopP = topP,
            // Seeds are 64-bit in OpenAI's API; the sampler's Random takes 32 bits, non-negative (-1 = random).
            Seed = seed is { } s ? (int)((ulong)s % int.MaxValue) : -1,
            Stop = ReadStop(root),
            IncludeUsage = includeUsage,
        };
    }

    private static string[] ReadStop(JsonElement root)
    {
        if (!root.TryGetProperty("stop", out var stop) || stop.ValueKind == JsonValueKind.Null) return [];
        if (stop.ValueKind == JsonValueKind.String) return [stop.GetString()!];
        if (stop.ValueKind != JsonValueKind.Array) throw ApiException.BadRequest("stop must be a string or an array of strings");
        if (stop.GetArrayLength() > 16) throw ApiException.BadRequest("stop has more than 16 strings");
        var list = new List<string>();
        foreach (var s in stop.EnumerateArray())
        {
            if (s.ValueKind != JsonValueKind.String) throw ApiException.BadRequest("stop must be a string or an array of strings");
            list.Add(s.GetString()!);
        }
        return list.ToArray();
    }

    public static string? OptionalString(JsonElement o, string name)
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.String ? v.GetString() : throw ApiException.BadRequest($"{name} must be a string");
    }

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
