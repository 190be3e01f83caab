using System.Net;
using System.Text;
using System.Text.Json;
using FitLM.Model;
using FitLM.Server;
using Xunit;
using FitLM.Memory;

namespace FitLM.Tests.Server;

/// <summary>The server hosted in the test process (FitLMServer.StartAsync on 127.0.0.1:0): admission and back-pressure.</summary>
public class InProcessServerTests
{
    [Fact]
    public async Task FullQueueAnswers503WithRetryAfterAndTheServerRecovers()
    {
        // A long generation (4000 tokens, seconds of work) keeps the one slot busy for the whole test, however fast
        // decode runs: with 500 tokens the running request could finish before the third one arrived.
        using var lm = LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = 4096, LogitRows = 1 });
        await using var server = await FitLMServer.StartAsync(lm, new ServerOptions { Port = 0, Parallel = 1, QueueCapacity = 1, Log = TextWriter.Null });
        using var http = new HttpClient { BaseAddress = server.Address };
        string Body(bool stream) => $$"""{"messages":[{"role":"user","content":"def f():"}], "max_tokens": 4000, "temperature": 0.9, "stream": {{(stream ? "true" : "false")}}}""";

        // One request runs (the only slot), one waits (the only queue place): the third is turned away.
        // The running one is a raw connection that reads its first chunk, so the test can hang up on it at once.
        byte[] body = Encoding.UTF8.GetBytes(Body(true));
        using var running = new System.Net.Sockets.TcpClient();
        await running.ConnectAsync(server.Address.Host, server.Address.Port);
        await running.GetStream().WriteAsync(Encoding.ASCII.GetBytes(
            $"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {body.Length}\r\n\r\n").Concat(body).ToArray());
        Assert.True(await running.GetStream().ReadAsync(new byte[256]) > 0);
        using var cts = new CancellationTokenSource();
        var waiting = http.PostAsync("v1/chat/completions", new StringContent(Body(false)), cts.Token);
        for (int i = 0; i < 100 && server.Scheduler.QueueDepth == 0; i++) await Task.Delay(20);
        Assert.Equal(1, server.Scheduler.QueueDepth);

        using var refused = await http.PostAsync("v1/chat/completions", new StringContent(Body(false)));
        Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
        Assert.Equal("1", refused.Headers.GetValues("Retry-After").Single());
        using (var doc = JsonDocument.Parse(await refused.Content.ReadAsStringAsync()))
            Assert.Equal("server_busy", doc.RootElement.GetProperty("error").GetProperty("code").GetString());

        // Hanging up frees the slot and the queue; the server answers again.
        running.Close();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting);
        for (int i = 0; i < 100 && (server.Scheduler.ActiveCount > 0 || server.Scheduler.QueueDepth > 0); i++) await Task.Delay(20);
        using var ok = await http.PostAsync("v1/completions", new StringContent("""{"prompt": "import os", "max_tokens": 4, "temperature": 0}""", Encoding.UTF8));
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
        Assert.Equal(0, lm.Transformer.KvStores.Pool.PagesInUse);
    }

    [Fact]
    public void BudgetTooSmallForOneSequenceIsAClearError()
    {
        using var lm = LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = 512 });
        // The plan was made for a generous budget; a server of ten million slots cannot give each a context.
        var e = Assert.Throws<FitLMException>(() => new KvBudget(lm, 10_000_000));
        Assert.Contains("--memory", e.Message);
    }
}
