using FitLM.Chat;
using FitLM.Generation;
using Xunit;

namespace FitLM.Tests.Chat;

/// <summary>A conversation turn by turn: prompts re-rendered through the template, the KV cache reused, old turns dropped.</summary>
public class ChatSessionTests
{
    private static readonly ChatReplyOptions Greedy = new() { MaxTokens = 12, Sampling = SamplingOptions.Greedy };

    [Fact]
    public void SecondTurnReusesTheCacheAndRepliesAsAFullPrefillWould()
    {
        using var lm = LanguageModel.Load(TestPaths.DemoModel, contextLength: 512);
        var session = new ChatSession(lm, ChatTemplate.ChatMl, "You write Python.");
        var first = session.Send("def add(a, b):", Greedy);
        ChatPrompt? prompt = null;
        var second = session.Send("def sub(a, b):", Greedy, onPrompt: p => prompt = p);

        Assert.NotNull(prompt);
        var expected = ChatTemplate.ChatMl.Render([
            new("system", "You write Python."), new("user", "def add(a, b):"), new("assistant", first.Text), new("user", "def sub(a, b):")]);
        Assert.Equal(expected, prompt.Text);
        Assert.InRange(prompt.Reused, 10, prompt.Tokens - 1);

        // The same prompt prefilled from position 0 on a fresh cache gives the same greedy reply.
        using var fresh = LanguageModel.Load(TestPaths.DemoModel, contextLength: 512);
        var tokens = ChatTemplate.ChatMl.Tokenize(fresh.Tokenizer, prompt.Text);
        var text = string.Concat(new Generator(fresh).Generate(tokens, 12, SamplingOptions.Greedy, ChatTemplate.ChatMl.StopStrings).Select(t => t.Text));
        Assert.Equal(text, second.Text);
        Assert.Equal(4, session.History.Count);
    }

    [Fact]
    public void ClearForgetsTheHistoryButKeepsTheSystemPrompt()
    {
        using var lm = LanguageModel.Load(TestPaths.DemoModel, contextLength: 256);
        var session = new ChatSession(lm, ChatTemplate.ChatMl, "Be brief.");
        session.Send("one", Greedy);
        session.Clear();
        ChatPrompt? prompt = null;
        session.Send("two", Greedy, onPrompt: p => prompt = p);
        Assert.Equal(ChatTemplate.ChatMl.Render([new("system", "Be brief."), new("user", "two")]), prompt!.Text);
    }

    [Fact]
    public void AFullContextDropsTheOldestExchangesAndATooLongMessageLeavesTheHistoryAlone()
    {
        using var lm = LanguageModel.Load(TestPaths.DemoModel, contextLength: 64);
        var session = new ChatSession(lm, ChatTemplate.ChatMl);
        var options = Greedy with { MaxTokens = 8 };
        int dropped = 0;
        for (int i = 0; i < 6; i++) session.Send($"message number {i}", options, onPrompt: p => dropped += p.DroppedMessages);
        Assert.True(dropped >= 2, $"dropped {dropped}");
        Assert.Equal("message number 5", session.History[^2].Content);

        var before = session.History.ToList();
        var e = Assert.Throws<FitLMException>(() => session.Send(string.Concat(Enumerable.Repeat("word ", 100)), options));
        Assert.Contains("the context holds 64", e.Message);
        Assert.Equal(before, session.History);
        Assert.False(string.IsNullOrEmpty(session.Send("still here", options).Text + "x"));
    }

    [Fact]
    public void CancellingKeepsThePartialReplyAndTheNextTurnStillWorks()
    {
        using var lm = LanguageModel.Load(TestPaths.DemoModel, contextLength: 256);
        var session = new ChatSession(lm, ChatTemplate.ChatMl);
        using var cts = new CancellationTokenSource();
        int pieces = 0;
        var reply = session.Send("def f(x):", Greedy with { MaxTokens = 100 }, onText: _ => { if (++pieces == 3) cts.Cancel(); }, ct: cts.Token);
        Assert.True(reply.Cancelled);
        Assert.Equal(reply.Text, session.History[^1].Content);
        ChatPrompt? prompt = null;
        session.Send("again", Greedy, onPrompt: p => prompt = p);
        Assert.Equal(0, prompt!.Reused); // a cancelled turn leaves no cache to trust
    }
}
