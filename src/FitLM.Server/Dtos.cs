using System.Text.Json.Serialization;

namespace FitLM.Server;

// Response bodies, OpenAI's (and for /tokenize, llama.cpp's) field names via the snake_case policy of JsonContext.
// Requests are read from a JsonDocument instead (RequestReader): OpenAI's fields take several shapes
// (stop: string or array; content: string or parts) and every bad value needs its own 400 message.

public sealed record ErrorBody(ErrorDetail Error);
public sealed record ErrorDetail(string Message, string Type, string? Code);

public sealed record Usage(int PromptTokens, int CompletionTokens, int TotalTokens);

public sealed record ChatMessage(string Role, string? Content);
public sealed record ChatChoice(int Index, ChatMessage Message, string? FinishReason);
public sealed record ChatCompletion(string Id, string Object, long Created, string Model, ChatChoice[] Choices, Usage Usage);

public sealed record ChatDelta(string? Role, string? Content);
public sealed record ChatChunkChoice(int Index, ChatDelta Delta, [property: JsonIgnore(Condition = JsonIgnoreCondition.Never)] string? FinishReason);
public sealed record ChatCompletionChunk(string Id, string Object, long Created, string Model, ChatChunkChoice[] Choices, Usage? Usage);

public sealed record TextChoice(int Index, string Text, [property: JsonIgnore(Condition = JsonIgnoreCondition.Never)] string? FinishReason);
public sealed record TextCompletion(string Id, string Object, long Created, string Model, TextChoice[] Choices, Usage? Usage);

public sealed record ModelCard(string Id, string Object, long Created, string OwnedBy);
public sealed record ModelList(string Object, ModelCard[] Data);

public sealed record Health(string Status);
public sealed record TokenizeResult(int[] Tokens);
public sealed record DetokenizeResult(string Content);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(ErrorBody))]
[JsonSerializable(typeof(ChatCompletion))]
[JsonSerializable(typeof(ChatCompletionChunk))]
[JsonSerializable(typeof(TextCompletion))]
[JsonSerializable(typeof(ModelList))]
[JsonSerializable(typeof(Health))]
[JsonSerializable(typeof(TokenizeResult))]
[JsonSerializable(typeof(DetokenizeResult))]
internal sealed partial class JsonContext : JsonSerializerContext
{
    /// <summary>As Default, but leaves quotes, '+' and non-ASCII text unescaped: responses read as they are (still valid JSON, HTML-unsafe, never served as HTML).</summary>
    public static JsonContext Web { get; } = new(new System.Text.Json.JsonSerializerOptions
    {
        PropertyNamingPolicy = System.Text.Json.JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    });
}
