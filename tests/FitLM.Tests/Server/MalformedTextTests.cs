using System.Text;
using System.Text.Json;
using Xunit;

namespace FitLM.Tests.Server;

/// <summary>
/// A lone UTF-16 surrogate escape ("\ud800") is valid JSON but no Unicode text: in any string of any endpoint it
/// used to throw while the server read it and came back as an empty, unlogged 500. Now a 400 naming the field.
/// </summary>
[Collection(ServerCollection.Name)]
public class MalformedTextTests(ServerProcess server)
{
    private const string User = """{"role":"user","content":"def f():"}""";

    // Raw strings: the backslash escapes reach the server as written.
    public static TheoryData<string, string, string> Cases => new()
    {
        { "v1/chat/completions", """{"messages": [{"role": "user", "content": "\ud800"}]}""", "messages[0].content" },
        { "v1/chat/completions", """{"messages": [{"role": "user", "content": [{"type": "text", "text": "a\udc00"}]}]}""", "text" },
        { "v1/chat/completions", """{"messages": [{"role": "\ud800", "content": "x"}]}""", "role" },
        { "v1/chat/completions", $$"""{"messages": [{{User}}], "model": "\ud800"}""", "model" },
        { "v1/chat/completions", $$"""{"messages": [{{User}}], "stop": "\ud800"}""", "stop" },
        { "v1/chat/completions", $$"""{"messages": [{{User}}], "stop": ["ok", "\udfff"]}""", "stop[1]" },
        { "v1/chat/completions", $$$"""{"messages": [{{{User}}}], "logit_bias": {"\ud800": 1}}""", "logit_bias" },
        { "v1/completions", """{"prompt": "\ud800"}""", "prompt" },
        { "v1/completions", """{"prompt": ["x\ud800"]}""", "prompt[0]" },
        { "v1/embeddings", """{"input": "\ud800"}""", "input" },
        { "v1/embeddings", """{"input": ["ok", "\ud800"]}""", "input[1]" },
        { "v1/embeddings", """{"input": "x", "encoding_format": "\ud800"}""", "encoding_format" },
        { "tokenize", """{"content": "\ud800"}""", "content" },
        // Keys too: the server compares them with the names it reads, which threw as well.
        { "v1/completions", """{"\ud800": 1, "prompt": "x"}""", "a key of the body" },
        { "detokenize", """{"tokens": [100], "extra": {"\udc00": 1}}""", "a key of extra" },
        { "v1/chat/completions", """{"messages": [{"role": "user", "content": "x", "name": "\ud800"}]}""", "messages[0].name" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task LoneSurrogateIsA400NamingTheField(string path, string body, string field)
    {
        double errors = await server.MetricAsync("fitlm_internal_errors_total");
        using var resp = await server.Http.PostAsync(path, new StringContent(body, Encoding.UTF8, "application/json"));
        string text = await resp.Content.ReadAsStringAsync();
        Assert.True((int)resp.StatusCode == 400, $"{path}: {(int)resp.StatusCode} {text}");
        using var doc = JsonDocument.Parse(text);
        var error = doc.RootElement.GetProperty("error");
        Assert.Equal("invalid_encoding", error.GetProperty("code").GetString());
        Assert.Contains(field, error.GetProperty("message").GetString());
        Assert.Equal(errors, await server.MetricAsync("fitlm_internal_errors_total"));
    }
}
