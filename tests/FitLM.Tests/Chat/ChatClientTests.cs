using System.Text;
using FitLM.Chat;
using FitLM.Model;
using Microsoft.Extensions.AI;
using Xunit;

namespace FitLM.Tests.Chat;

public sealed class DemoChatModel : IDisposable
{
    public LanguageModel Model { get; } = LanguageModel.Load(TestPaths.DemoModel, contextLength: 512);
    public void Dispose() => Model.Dispose();
}

/// <summary>The IChatClient over the demo base model (pycoder, completion template).</summary>
public class ChatClientTests(DemoChatModel fixture) : IClassFixture<DemoChatModel>
{
    private static readonly ChatMessage[] Prompt = [new(ChatRole.User, "import os\n\ndef list_files(path):\n")];

    private FitLMChatClient Client() => new(fixture.Model);

    private static async Task<(string Text, List<ChatResponseUpdate> Updates)> Stream(IChatClient c, ChatOptions o, CancellationToken ct = default)
    {
        var sb = new StringBuilder();
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in c.GetStreamingResponseAsync(Prompt, o, ct))
        {
            updates.Add(u);
            sb.Append(u.Text);
        }
        return (sb.ToString(), updates);
    }

    [Fact]
    public async Task StreamingConcatenationEqualsNonStreamingAtTemperatureZero()
    {
        var c = Client();
        var o = new ChatOptions { Temperature = 0, MaxOutputTokens = 24 };
        var response = await c.GetResponseAsync(Prompt, o);
        var (streamed, updates) = await Stream(c, o);
        Assert.False(string.IsNullOrEmpty(response.Text));
        Assert.Equal(response.Text, streamed);
        Assert.True(updates.Count > 2, "text should arrive in several updates");
        Assert.Equal(c.Template.Tokenize(fixture.Model.Tokenizer, c.Template.Render([new ChatTurn("user", Prompt[0].Text)])).Length,
            (int)response.Usage!.InputTokenCount!);
        Assert.Equal(response.Usage.InputTokenCount + response.Usage.OutputTokenCount, response.Usage.TotalTokenCount);
        Assert.Equal("fitlm-", response.ResponseId![..6]);
    }

    [Fact]
    public async Task MaxOutputTokensIsRespected()
    {
        var response = await Client().GetResponseAsync(Prompt, new ChatOptions { Temperature = 0, MaxOutputTokens = 7 });
        Assert.Equal(7, response.Usage!.OutputTokenCount);
        Assert.Equal(ChatFinishReason.Length, response.FinishReason);
        // The text is exactly what those 7 tokens decode to.
        var again = await Client().GetResponseAsync(Prompt, new ChatOptions { Temperature = 0, MaxOutputTokens = 12 });
        Assert.StartsWith(response.Text, again.Text);
        Assert.True(again.Text.Length > response.Text.Length);
    }

    [Fact]
    public async Task StopSequencesCutTheText()
    {
        var c = Client();
        var full = await c.GetResponseAsync(Prompt, new ChatOptions { Temperature = 0, MaxOutputTokens = 40 });
        string text = full.Text;
        Assert.True(text.Length > 12, text);
        // Stop on a piece from the middle of the greedy text: everything before its first occurrence remains.
        string stop = text.Substring(text.Length / 2, 3);
        int cut = text.IndexOf(stop, StringComparison.Ordinal);
        var stopped = await c.GetResponseAsync(Prompt, new ChatOptions { Temperature = 0, MaxOutputTokens = 40, StopSequences = [stop] });
        Assert.Equal(text[..cut], stopped.Text);
        Assert.Equal(ChatFinishReason.Stop, stopped.FinishReason);
        Assert.True(stopped.Usage!.OutputTokenCount < full.Usage!.OutputTokenCount);
    }

    [Fact]
    public async Task SeedMakesSamplingReproducible()
    {
        var c = Client();
        ChatOptions With(long seed) => new() { Temperature = 1, TopK = 0, TopP = 1, Seed = seed, MaxOutputTokens = 24 };
        var a = await c.GetResponseAsync(Prompt, With(42));
        var b = await c.GetResponseAsync(Prompt, With(42));
        Assert.Equal(a.Text, b.Text);
        var others = new List<string>();
        foreach (long seed in new long[] { 1, 2, 3 }) others.Add((await c.GetResponseAsync(Prompt, With(seed))).Text);
        Assert.Contains(others, t => t != a.Text);
    }

    [Fact]
    public async Task CancellationMidStreamStopsQuicklyAndTheModelStaysUsable()
    {
        var c = Client();
        using var cts = new CancellationTokenSource();
        int received = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var u in c.GetStreamingResponseAsync(Prompt, new ChatOptions { Temperature = 0, MaxOutputTokens = 400 }, cts.Token))
            {
                if (++received == 3) cts.Cancel();
            }
        });
        // Promptness as a count, not a time: generation checks the token between tokens, so only what was
        // already produced (a handful of updates) can arrive after the cancel.
        Assert.True(received < 50, $"{received} updates arrived after cancelling");
        var after = await c.GetResponseAsync(Prompt, new ChatOptions { Temperature = 0, MaxOutputTokens = 5 });
        Assert.Equal(5, after.Usage!.OutputTokenCount);
    }

    [Fact]
    public async Task ConcurrentRequestsTakeTurnsOnTheModel()
    {
        var o = new ChatOptions { Temperature = 0, MaxOutputTokens = 16 };
        var expected = (await Client().GetResponseAsync(Prompt, o)).Text;
        var results = await Task.WhenAll(Enumerable.Range(0, 3).Select(_ => Task.Run(() => Client().GetResponseAsync(Prompt, o))));
        Assert.All(results, r => Assert.Equal(expected, r.Text));
    }

    [Fact]
    public void MetadataNamesProviderAndModel()
    {
        var c = Client();
        var meta = c.GetService<ChatClientMetadata>();
        Assert.NotNull(meta);
        Assert.Equal("fitlm", meta!.ProviderName);
        Assert.Equal("pycoder-29m-q4_k_m.gguf", meta.DefaultModelId);
        Assert.Same(c, c.GetService<FitLMChatClient>());
        Assert.Null(c.GetService<ChatClientMetadata>("some key"));
    }

    [Fact]
    public async Task BadOptionsAreFitLMExceptions()
    {
        var c = Client();
        await Assert.ThrowsAsync<FitLMException>(() => c.GetResponseAsync(Prompt, new ChatOptions { Temperature = -1 }));
        await Assert.ThrowsAsync<FitLMException>(() => c.GetResponseAsync(Prompt, new ChatOptions { MaxOutputTokens = 0 }));
        await Assert.ThrowsAsync<FitLMException>(() => c.GetResponseAsync([], new ChatOptions()));
    }
}
