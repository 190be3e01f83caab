using System.Text.Json.Serialization;

namespace FitLM.Server;

// Response bodies, OpenAI's (and for /tokenize, llama.cpp's) field names via the snake_case policy of JsonContext.
// Requests are read from a JsonDocument instead (RequestReader): OpenAI's fields take several shapes
// (stop: string or array; content: string or parts) and every bad value needs its own 400 message.

public sealed record ErrorBody(ErrorDetail Error);
public sealed record ErrorDetail(string Message, string Type, string? Code);

public sealed record Usage(int PromptTokens, int CompletionTokens, int TotalTokens);

public sealed record ChatMessage(string Role, string? Content);
public sealed record ChatChoice(int Index, ChatMessage Message, ChatLogprobs? Logprobs, string? FinishReason);
public sealed record ChatCompletion(string Id, string Object, long Created, string Model, ChatChoice[] Choices, Usage Usage);

public sealed record ChatDelta(string? Role, string? Content);
public sealed record ChatChunkChoice(int Index, ChatDelta Delta, ChatLogprobs? Logprobs, [property: JsonIgnore(Condition = JsonIgnoreCondition.Never)] string? FinishReason);
public sealed record ChatCompletionChunk(string Id, string Object, long Created, string Model, ChatChunkChoice[] Choices, Usage? Usage);

// Chat logprobs as OpenAI's SDKs parse them: choices[].logprobs.content[] (bytes are the token's UTF-8 bytes as numbers).
public sealed record ChatLogprobs(ChatTokenLogprob[] Content);
public sealed record ChatTokenLogprob(string Token, float Logprob, int[] Bytes, ChatTopLogprob[] TopLogprobs);
public sealed record ChatTopLogprob(string Token, float Logprob, int[] Bytes);

public sealed record TextChoice(int Index, string Text, TextLogprobs? Logprobs, [property: JsonIgnore(Condition = JsonIgnoreCondition.Never)] string? FinishReason);
public sealed record TextCompletion(string Id, string Object, long Created, string Model, TextChoice[] Choices, Usage? Usage);
/// <summary>Completions logprobs (the legacy shape): parallel arrays; text_offset is where each token starts in the returned text.</summary>
public sealed record TextLogprobs(string[] Tokens, float[] TokenLogprobs, Dictionary<string, float>[] TopLogprobs, int[] TextOffset);

public sealed record ModelCard(string Id, string Object, long Created, string OwnedBy);
public sealed record ModelList(string Object, ModelCard[] Data);

/// <summary>/v1/embeddings: Embedding is float[] or, with encoding_format "base64", the little-endian float32 bytes in base64.</summary>
public sealed record EmbeddingList<T>(string Object, EmbeddingItem<T>[] Data, string Model, EmbeddingUsage Usage);
public sealed record EmbeddingItem<T>(string Object, int Index, T Embedding);
public sealed record EmbeddingUsage(int PromptTokens, int TotalTokens);

/// <summary>GET /props in llama.cpp's server shape (the fields its clients read).</summary>
public sealed record Props(GenerationSettings DefaultGenerationSettings, int TotalSlots, string ModelPath, string ModelAlias, string? ChatTemplate,
    string BosToken, string EosToken, Modalities Modalities, string BuildInfo);
public sealed record GenerationSettings(int Id, int IdTask, int NCtx, bool Speculative, bool IsProcessing, SamplingDefaults Params);
public sealed record SamplingDefaults(int NPredict, long Seed, float Temperature, int TopK, float TopP, float MinP, int RepeatLastN, float RepeatPenalty,
    float PresencePenalty, float FrequencyPenalty, int NProbs, bool Stream, string[] Stop);
public sealed record Modalities(bool Vision, bool Audio);

public sealed record Health(string Status);
public sealed record TokenizeResult(int[] Tokens);
public sealed record DetokenizeResult(string Content);

/// <summary>GET/POST /budget: the memory budget now, the one asked for, where it comes from, and the adaptations so far (the last one's line).</summary>
public sealed record BudgetState(long BudgetBytes, long RequestedBytes, string Source, int Adaptations, string? LastAdaptation, long RssBytes, string KvType);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(ErrorBody))]
[JsonSerializable(typeof(ChatCompletion))]
[JsonSerializable(typeof(ChatCompletionChunk))]
[JsonSerializable(typeof(TextCompletion))]
[JsonSerializable(typeof(ModelList))]
[JsonSerializable(typeof(ModelCard))]
[JsonSerializable(typeof(EmbeddingList<float[]>))]
[JsonSerializable(typeof(EmbeddingList<string>))]
[JsonSerializable(typeof(Props))]
[JsonSerializable(typeof(Health))]
[JsonSerializable(typeof(TokenizeResult))]
[JsonSerializable(typeof(DetokenizeResult))]
[JsonSerializable(typeof(BudgetState))]
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
