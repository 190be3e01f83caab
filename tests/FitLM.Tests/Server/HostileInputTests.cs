using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Server;

/// <summary>Bad requests get OpenAI-shaped errors with the right status, and abuse leaves the server healthy and within budget.</summary>
[Collection(ServerCollection.Name)]
public class HostileInputTests(ServerProcess server, ITestOutputHelper output)
{
    private const string User = """{"role":"user","content":"def f():"}""";

    public static TheoryData<string, string, int, string> Cases => new()
    {
        { "v1/chat/completions", "{\"messages\": [", 400, "invalid_json" },
        { "v1/chat/completions", "[1, 2]", 400, "invalid_json" },
        { "v1/chat/completions", "", 400, "invalid_json" },
        { "v1/chat/completions", "{}", 400, "missing_required_parameter" },
        { "v1/chat/completions", """{"messages": []}""", 400, "invalid_value" },
        { "v1/chat/completions", """{"messages": "hello"}""", 400, "invalid_value" },
        { "v1/chat/completions", """{"messages": [{"content": "x"}]}""", 400, "invalid_value" },
        { "v1/chat/completions", $$"""{"messages": [{{User}}], "model": "gpt-4o"}""", 404, "model_not_found" },
        { "v1/chat/completions", $$"""{"messages": [{{User}}], "temperature": -0.1}""", 400, "invalid_value" },
        { "v1/chat/completions", $$"""{"messages": [{{User}}], "temperature": 2.5}""", 400, "invalid_value" },
        { "v1/chat/completions", $$"""{"messages": [{{User}}], "temperature": "hot"}""", 400, "invalid_value" },
        { "v1/chat/completions", $$"""{"messages": [{{User}}], "top_p": 0}""", 400, "invalid_value" },
        { "v1/chat/completions", $$"""{"messages": [{{User}}], "top_p": 1.5}""", 400, "invalid_value" },
        { "v1/chat/completions", $$"""{"messages": [{{User}}], "max_tokens": 0}""", 400, "invalid_value" },
        { "v1/chat/completions", """{"messages": [{"role": "user"}]}""", 400, "missing_required_parameter" },
        { "v1/chat/completions", """{"messages": [{"role": "system", "content": null}, {"role": "user", "content": "x"}]}""", 400, "missing_required_parameter" },
        { "v1/chat/completions", """{"messages": [{"role": "user", "content": [{"type": "text"}]}]}""", 400, "missing_required_parameter" },
        { "v1/chat/completions", $$"""{"messages": [{{User}}], "top_logprobs": 3}""", 400, "invalid_value" },
        { "v1/chat/completions", $$"""{"messages": [{{User}}], "logprobs": true, "top_logprobs": 21}""", 400, "invalid_value" },
        { "v1/chat/completions", $$"""{"messages": [{{User}}], "frequency_penalty": 2.5}""", 400, "invalid_value" },
        { "v1/chat/completions", $$$"""{"messages": [{{{User}}}], "logit_bias": {"x": 1}}""", 400, "invalid_value" },
        { "v1/chat/completions", $$$"""{"messages": [{{{User}}}], "logit_bias": {"99999": 1}}""", 400, "invalid_value" },
        { "v1/chat/completions", $$$"""{"messages": [{{{User}}}], "tools": [{"type": "function", "function": {"name": "f"}}]}""", 400, "unsupported_parameter" },
        { "v1/chat/completions", $$$"""{"messages": [{{{User}}}], "response_format": {"type": "json_object"}}""", 400, "unsupported_parameter" },
        { "v1/completions", """{"prompt": "x", "best_of": 3}""", 400, "unsupported_parameter" },
        { "v1/completions", """{"prompt": "x", "suffix": "y"}""", 400, "unsupported_parameter" },
        { "v1/completions", """{"prompt": "x", "echo": true, "logprobs": 1}""", 400, "unsupported_parameter" },
        { "v1/completions", """{"prompt": "x", "logprobs": 50}""", 400, "invalid_value" },
        { "v1/embeddings", "{}", 400, "missing_required_parameter" },
        { "v1/embeddings", """{"input": []}""", 400, "invalid_value" },
        { "v1/embeddings", """{"input": "x", "encoding_format": "int8"}""", 400, "invalid_value" },
        { "v1/embeddings", """{"input": "x", "dimensions": 3}""", 400, "unsupported_parameter" },
        { "v1/embeddings", """{"input": [[99999]]}""", 400, "invalid_value" },
        { "v1/chat/completions", $$"""{"messages": [{{User}}], "max_completion_tokens": -5}""", 400, "invalid_value" },
        { "v1/chat/completions", $$"""{"messages": [{{User}}], "n": 2}""", 400, "invalid_value" },
        { "v1/chat/completions", $$"""{"messages": [{{User}}], "stop": 7}""", 400, "invalid_value" },
        { "v1/chat/completions", $$"""{"messages": [{"role":"user","content":"{{string.Concat(Enumerable.Repeat("def f(): pass\\n", 200))}}"}]}""", 400, "context_length_exceeded" },
        { "v1/completions", "{}", 400, "missing_required_parameter" },
        { "v1/completions", """{"prompt": [99999]}""", 400, "invalid_value" },
        { "v1/completions", """{"prompt": "x", "model": "other"}""", 404, "model_not_found" },
        { "detokenize", """{"tokens": [-1]}""", 400, "invalid_value" },
        { "v1/nothing-here", "{}", 404, "not_found" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task BadRequestsGetTheirStatusAndOpenAiErrorShape(string path, string body, int status, string code)
    {
        using var resp = await server.Http.PostAsync(path, new StringContent(body, Encoding.UTF8, "application/json"));
        await AssertError(resp, status, code);
    }

    [Fact]
    public async Task InvalidUtf8IsRejected()
    {
        byte[] body = [.. Encoding.UTF8.GetBytes("""{"messages":[{"role":"user","content":" """), 0xC3, 0x28, 0xFF, .. Encoding.UTF8.GetBytes("\"}]}")];
        using var content = new ByteArrayContent(body);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        using var resp = await server.Http.PostAsync("v1/chat/completions", content);
        await AssertError(resp, 400, "invalid_encoding");
    }

    [Fact]
    public async Task TenMegabyteBodyIs413AndTheServerStaysHealthy()
    {
        string big = "{\"prompt\": \"" + new string('x', 10 << 20) + "\"}";
        // A client that asks first (Expect: 100-continue, as curl does for large bodies) gets the 413 before sending it.
        using (var req = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = new StringContent(big, Encoding.UTF8, "application/json") })
        {
            req.Headers.ExpectContinue = true;
            using var resp = await server.Http.SendAsync(req);
            await AssertError(resp, 413, "request_too_large");
        }
        // One that just sends it gets the 413 too, or sees the connection closed after the first megabyte:
        // the server answers by the declared length and does not read the rest.
        try
        {
            using var resp = await server.Http.PostAsync("v1/completions", new StringContent(big, Encoding.UTF8, "application/json"));
            await AssertError(resp, 413, "request_too_large");
        }
        catch (HttpRequestException e) when (e.InnerException is IOException)
        {
            output.WriteLine($"without Expect: 100-continue the upload was cut off ({e.InnerException.Message})");
        }
        using var health = await server.Http.GetAsync("health");
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
    }

    [Fact]
    public async Task MissingOrWrongApiKeyIs401ButHealthIsOpen()
    {
        using var anonymous = new HttpClient { BaseAddress = server.Address };
        using (var r = await anonymous.PostAsync("v1/chat/completions", new StringContent($$"""{"messages":[{{User}}]}""")))
            await AssertError(r, 401, "invalid_api_key");
        anonymous.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "not-the-key");
        using (var r = await anonymous.GetAsync("v1/models")) await AssertError(r, 401, "invalid_api_key");
        using (var r = await anonymous.GetAsync("health")) Assert.Equal(HttpStatusCode.OK, r.StatusCode);
    }

    [Fact]
    public async Task ThousandRapidDisconnectsMidStreamLeaveTheServerHealthyWithEveryPageReturned()
    {
        const int total = 1000, lanes = 8;
        int next = -1, cut = 0;
        byte[] body = Encoding.UTF8.GetBytes($$"""{"messages":[{{User}}], "max_tokens": 400, "temperature": 0.7, "stream": true}""");
        byte[] request = [.. Encoding.ASCII.GetBytes($"POST /v1/chat/completions HTTP/1.1\r\nHost: {server.Address.Authority}\r\nAuthorization: Bearer {ServerProcess.ApiKey}\r\n" +
            $"Content-Type: application/json\r\nContent-Length: {body.Length}\r\n\r\n"), .. body];
        // Raw sockets: a client that reads the first streamed chunk and hangs up (no connection reuse, no draining).
        await Task.WhenAll(Enumerable.Range(0, lanes).Select(_ => Task.Run(async () =>
        {
            var buffer = new byte[4096];
            while (Interlocked.Increment(ref next) < total)
            {
                using var tcp = new System.Net.Sockets.TcpClient();
                await tcp.ConnectAsync(server.Address.Host, server.Address.Port);
                var stream = tcp.GetStream();
                await stream.WriteAsync(request);
                var seen = new StringBuilder();
                while (!seen.ToString().Contains("data: "))
                {
                    int read = await stream.ReadAsync(buffer);
                    Assert.True(read > 0, $"the server closed the stream before its first chunk: {seen}");
                    seen.Append(Encoding.UTF8.GetString(buffer, 0, read));
                }
                Assert.StartsWith("HTTP/1.1 200", seen.ToString());
                Interlocked.Increment(ref cut); // disposing the client closes the connection mid-stream
            }
        })));
        Assert.Equal(total, cut);

        using (var health = await server.Http.GetAsync("health")) Assert.Equal(HttpStatusCode.OK, health.StatusCode);
        // Cancelled sequences leave the batch before the next pass: every KV page goes back to the pool.
        double pages = -1, active = -1;
        for (int i = 0; i < 100 && (pages != 0 || active != 0); i++)
        {
            await Task.Delay(50);
            pages = await server.MetricAsync("fitlm_kv_pages_in_use");
            active = await server.MetricAsync("fitlm_active_sequences");
        }
        Assert.Equal(0, active);
        Assert.Equal(0, pages);
        Assert.Equal(0, await server.MetricAsync("fitlm_kv_bytes_reserved"));
        double peak = await server.MetricAsync("fitlm_process_peak_resident_memory_bytes");
        output.WriteLine($"after {total} disconnects: peak RSS {peak / (1 << 20):F1} MiB of a {ServerProcess.BudgetBytes >> 20} MiB budget");
        Assert.True(peak <= ServerProcess.BudgetBytes, $"peak RSS {peak} is over the budget {ServerProcess.BudgetBytes}");
        // And it still generates.
        Assert.False(string.IsNullOrEmpty((await server.StreamChatAsync("def g():", 8)).Text));
    }

    private static async Task AssertError(HttpResponseMessage resp, int status, string code)
    {
        string text = await resp.Content.ReadAsStringAsync();
        Assert.True(status == (int)resp.StatusCode, $"expected {status}, got {(int)resp.StatusCode}: {text}");
        using var doc = JsonDocument.Parse(text);
        var error = doc.RootElement.GetProperty("error");
        Assert.False(string.IsNullOrWhiteSpace(error.GetProperty("message").GetString()));
        Assert.False(string.IsNullOrWhiteSpace(error.GetProperty("type").GetString()));
        Assert.Equal(code, error.GetProperty("code").GetString());
    }
}
