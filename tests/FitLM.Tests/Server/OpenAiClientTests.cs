using System.ClientModel;
using System.Text;
using FitLM.Tests.Cli;
using OpenAI;
using OpenAI.Chat;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Server;

/// <summary>The official OpenAI .NET client against `fitlm serve`: text comes back, and at temperature 0 it is `fitlm run`'s.</summary>
[Collection(ServerCollection.Name)]
public class OpenAiClientTests(ServerProcess server, ITestOutputHelper output)
{
    private ChatClient Client(string model = "pycoder-29m-q4_k_m.gguf") =>
        new(model, new ApiKeyCredential(ServerProcess.ApiKey), new OpenAIClientOptions { Endpoint = new Uri(server.Address, "v1") });

    [Fact]
    public void CompleteChatAndStreamingEqualFitlmRunAtTemperatureZero()
    {
        // The demo model is a base model: the completion template renders one user message as its content.
        const string prompt = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n";
        const int maxTokens = 24;
        var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = maxTokens };

        ChatCompletion whole = Client().CompleteChat([new UserChatMessage(prompt)], options);
        string text = whole.Content[0].Text;
        output.WriteLine($"CompleteChat: {text}");
        Assert.False(string.IsNullOrEmpty(text));
        Assert.Equal(ChatFinishReason.Length, whole.FinishReason);
        Assert.Equal(maxTokens, whole.Usage.OutputTokenCount);
        Assert.True(whole.Usage.InputTokenCount > 5);

        var streamed = new StringBuilder();
        int updates = 0;
        foreach (var update in Client("fitlm").CompleteChatStreaming([new UserChatMessage(prompt)], options))
        {
            foreach (var part in update.ContentUpdate) streamed.Append(part.Text);
            updates++;
        }
        Assert.True(updates > 2, $"{updates} streamed updates");
        Assert.Equal(text, streamed.ToString());

        var run = CliRunner.Run("run", "-m", TestPaths.DemoModel, "-p", prompt, "-n", $"{maxTokens}", "--temp", "0", "-c", "512", "-t", "1");
        Assert.True(run.ExitCode == 0, run.StdErr);
        Assert.StartsWith(prompt, run.StdOut);
        Assert.Equal(run.StdOut[prompt.Length..^1], text); // `fitlm run` echoes the prompt and ends with a newline
    }

    [Fact]
    public void StopStringEndsTheCompletionBeforeIt()
    {
        var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 40 };
        options.StopSequences.Add("\n\n");
        ChatCompletion c = Client().CompleteChat([new UserChatMessage("import os\nimport sys\n")], options);
        string text = c.Content.Count > 0 ? c.Content[0].Text : "";
        output.WriteLine($"stopped: {text}");
        Assert.DoesNotContain("\n\n", text);
        Assert.Equal(ChatFinishReason.Stop, c.FinishReason);
    }

    [Fact]
    public void WrongApiKeyIsRefused()
    {
        var client = new ChatClient("fitlm", new ApiKeyCredential("wrong"), new OpenAIClientOptions { Endpoint = new Uri(server.Address, "v1") });
        var e = Assert.Throws<ClientResultException>(() => client.CompleteChat([new UserChatMessage("x")]));
        Assert.Equal(401, e.Status);
    }
}
