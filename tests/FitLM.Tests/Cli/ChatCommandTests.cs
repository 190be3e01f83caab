using System.Text.RegularExpressions;
using FitLM.Chat;
using Xunit;

namespace FitLM.Tests.Cli;

/// <summary>`fitlm chat` with piped input (each line a user message), as a script would run it.</summary>
public class ChatCommandTests
{
    private static readonly string[] Chat = ["chat", "-m", TestPaths.DemoModel, "-n", "8", "--temp", "0", "-c", "256", "--verbose-prompt"];

    /// <summary>The prompts --verbose-prompt printed, in order.</summary>
    private static List<(string Text, int Reused)> Prompts(string stderr) =>
        Regex.Matches(stderr, @"\[prompt: \d+ tokens, (\d+) reused from the previous turn\]\n(.*?)\[/prompt\]\n", RegexOptions.Singleline)
            .Select(m => (m.Groups[2].Value, int.Parse(m.Groups[1].Value))).ToList();

    [Fact]
    public void TwoTurnsClearAndExitRenderTheHistoryThroughTheTemplate()
    {
        var r = CliRunner.RunWithInput("def add(a, b):\nprint hello\n/clear\nthird\n/exit\nnever sent\n", Chat);
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("note: the model has no chat template; using chatml", r.StdErr);
        Assert.Contains("template chatml", r.StdErr);
        Assert.Contains("/exit", r.StdErr); // the banner says how to leave
        var prompts = Prompts(r.StdErr);
        Assert.Equal(3, prompts.Count);
        var t = ChatTemplate.ChatMl;
        Assert.Equal(t.Render([new("user", "def add(a, b):")]), prompts[0].Text);
        // The second prompt is the first exchange plus the new message; the first reply is what stdout shows first.
        var firstReply = Enumerable.Range(0, r.StdOut.Length).Where(i => r.StdOut[i] == '\n').Select(i => r.StdOut[..i])
            .FirstOrDefault(a => t.Render([new("user", "def add(a, b):"), new("assistant", a), new("user", "print hello")]) == prompts[1].Text);
        Assert.NotNull(firstReply);
        Assert.True(prompts[1].Reused > 0, "the second turn reuses the first turn's KV cache");
        Assert.Equal(t.Render([new("user", "third")]), prompts[2].Text); // after /clear
    }

    [Fact]
    public void RunCnvStartsTheSameChatWithThePromptAsTheSystemPrompt()
    {
        string[] common = ["-m", TestPaths.DemoModel, "-n", "8", "--temp", "0", "-c", "256"];
        var chat = CliRunner.RunWithInput("def add(a, b):\nprint hello\n", ["chat", .. common, "--system", "You write Python."]);
        var run = CliRunner.RunWithInput("def add(a, b):\nprint hello\n", ["run", "-cnv", .. common, "-p", "You write Python."]);
        Assert.Equal(0, run.ExitCode);
        Assert.Contains("template chatml", run.StdErr);
        Assert.Equal(chat.StdOut, run.StdOut);
    }

    [Fact]
    public void ABuiltInTemplateByNameAndTheSystemPrompt()
    {
        var r = CliRunner.RunWithInput("hello\n", [.. Chat, "--chat-template", "llama3", "--system", "Be brief."]);
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("template llama3", r.StdErr);
        Assert.DoesNotContain("no chat template", r.StdErr);
        using var lm = LanguageModel.Load(TestPaths.DemoModel, contextLength: 64);
        var expected = BuiltInChatTemplates.Get("llama3", lm.Tokenizer).Render([new("system", "Be brief."), new("user", "hello")]);
        Assert.Equal(expected, Assert.Single(Prompts(r.StdErr)).Text);
    }

    [Fact]
    public void ATemplateFromAFile()
    {
        string path = Path.Combine(Path.GetTempPath(), $"fitlm-chat-{Guid.NewGuid():N}.jinja");
        File.WriteAllText(path, "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}");
        try
        {
            var r = CliRunner.RunWithInput("hello\n", [.. Chat, "--chat-template", path]);
            Assert.Equal(0, r.ExitCode);
            Assert.Contains($"template {Path.GetFileName(path)}", r.StdErr);
            Assert.Equal("[user] hello\n[assistant] ", Assert.Single(Prompts(r.StdErr)).Text);
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void ABadTemplateIsAOneLineError()
    {
        string path = Path.Combine(Path.GetTempPath(), $"fitlm-chat-{Guid.NewGuid():N}.jinja");
        File.WriteAllText(path, "{% for m in messages %}{{ m.content }}");
        try
        {
            foreach (var (template, expect) in new[] { (path, path), ("/nonexistent/chat.jinja", "not found"), ("vicuna", "llama3") })
            {
                var r = CliRunner.RunWithInput("hello\n", [.. Chat, "--chat-template", template]);
                Assert.Equal(1, r.ExitCode);
                var line = Assert.Single(r.ErrorLines);
                Assert.StartsWith("error: ", line);
                Assert.Contains(expect, line);
                Assert.Equal("", r.StdOut);
            }
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void AFullContextDropsOldTurnsAndATooLongMessageKeepsTheChat()
    {
        string longMessage = string.Concat(Enumerable.Repeat("word ", 100));
        var r = CliRunner.RunWithInput($"one\ntwo\nthree\nfour\n{longMessage}\nfive\n",
            "chat", "-m", TestPaths.DemoModel, "-n", "8", "--temp", "0", "-c", "48", "--verbose-prompt");
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("dropped the oldest", r.StdErr);
        Assert.Contains("error: this message makes a prompt of", r.StdErr);
        Assert.Equal(5, Prompts(r.StdErr).Count); // every message but the long one got a reply
        Assert.EndsWith(ChatTemplate.ChatMl.Render([new("user", "five")])[^30..], Prompts(r.StdErr)[^1].Text);
    }
}
