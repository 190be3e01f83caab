using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;

namespace FitLM.Cli.Commands;

/// <summary>
/// The JSON the CLI prints (`plan --json`, `bench --json`, `tokenize --json`, `detokenize --json`), written from
/// source-generated metadata: a Native AOT build (`-p:PublishAot=true`, docs/memory.md) has no reflection-based
/// serializer, and the output is the same byte for byte in both builds. Values typed <c>object</c> (the
/// dictionaries' fields) serialize as their runtime type, which must be listed here.
/// </summary>
internal static class CliJson
{
    private static readonly JsonSerializerOptions s_compact = new() { TypeInfoResolver = CliJsonContext.Default };
    private static readonly JsonSerializerOptions s_indented = new() { WriteIndented = true, TypeInfoResolver = CliJsonContext.Default };
    // Relaxed escaping: text for a terminal or a script, not for embedding in HTML (<s> stays <s>).
    private static readonly JsonSerializerOptions s_relaxed = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping, TypeInfoResolver = CliJsonContext.Default };

    public static string Compact<T>(T value) => JsonSerializer.Serialize(value, Info<T>(s_compact));

    public static string Indented<T>(T value) => JsonSerializer.Serialize(value, Info<T>(s_indented));

    public static string Relaxed<T>(T value) => JsonSerializer.Serialize(value, Info<T>(s_relaxed));

    public static T? Parse<T>(string json) => JsonSerializer.Deserialize(json, Info<T>(s_compact));

    private static JsonTypeInfo<T> Info<T>(JsonSerializerOptions options) => (JsonTypeInfo<T>)options.GetTypeInfo(typeof(T));
}

/// <summary>One tensor of `plan --json`.</summary>
internal sealed record PlanTensorJson(
    [property: JsonPropertyName("name")] string Name,
    [property: JsonPropertyName("bytes")] long Bytes,
    [property: JsonPropertyName("placement")] string Placement);

[JsonSerializable(typeof(Dictionary<string, object?>))]
[JsonSerializable(typeof(Dictionary<string, object>[]))]
[JsonSerializable(typeof(PlanTensorJson[]))]
[JsonSerializable(typeof(string[]))]
[JsonSerializable(typeof(int[][]))]
[JsonSerializable(typeof(double[]))]
[JsonSerializable(typeof(object))]
[JsonSerializable(typeof(string))]
[JsonSerializable(typeof(int))]
[JsonSerializable(typeof(long))]
[JsonSerializable(typeof(double))]
[JsonSerializable(typeof(bool))]
internal sealed partial class CliJsonContext : JsonSerializerContext;
