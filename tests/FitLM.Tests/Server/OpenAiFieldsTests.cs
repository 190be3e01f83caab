using System.Text;
using System.Text.Json;
using Xunit;

namespace FitLM.Tests.Server;

/// <summary>
/// The request fields that used to be accepted and ignored (logprobs, top_logprobs, echo, frequency and presence
/// penalties, logit_bias) now act, in the response shapes OpenAI's API has; max_tokens past the context is clamped (InProcessEndpointTests).
/// </summary>
[Collection(ServerCollection.Name)]
public class OpenAiFieldsTests(ServerProcess server)
{
    private const string Prompt = "def fibonacci(n):\n";

    private async Task<JsonElement> PostAsync(string path, string body)
    {
        using var resp = await server.Http.PostAsync(path, new StringContent(body, Encoding.UTF8, "application/json"));
        string text = await resp.Content.ReadAsStringAsync();
        Assert.True((int)resp.StatusCode == 200, $"{(int)resp.StatusCode}: {text}");
        return JsonDocument.Parse(text).RootElement.Clone();
    }

    /// <summary>The data: payloads of a streamed answer, [DONE] excluded.</summary>
    private async Task<List<JsonElement>> StreamAsync(string path, string body)
    {
        using var resp = await server.Http.PostAsync(path, new StringContent(body, Encoding.UTF8, "application/json"));
        Assert.Equal(200, (int)resp.StatusCode);
        var events = new List<JsonElement>();
        foreach (var line in (await resp.Content.ReadAsStringAsync()).Split('\n'))
            if (line.StartsWith("data: ", StringComparison.Ordinal) && line != "data: [DONE]") events.Add(JsonDocument.Parse(line[6..]).RootElement.Clone());
        return events;
    }

    private static string Body(object o) => JsonSerializer.Serialize(o);

    private static object Chat(int max, object? extra = null)
    {
        var d = new Dictionary<string, object?> { ["messages"] = new[] { new { role = "user", content = Prompt } }, ["max_tokens"] = max, ["temperature"] = 0 };
        if (extra != null) foreach (var p in extra.GetType().GetProperties()) d[p.Name] = p.GetValue(extra);
        return d;
    }

    [Fact]
    public async Task ChatLogprobsAreTheGreedyTokensWithSortedAlternatives()
    {
        var r = await PostAsync("v1/chat/completions", Body(Chat(12, new { logprobs = true, top_logprobs = 3 })));
        var choice = r.GetProperty("choices")[0];
        string content = choice.GetProperty("message").GetProperty("content").GetString()!;
        var tokens = choice.GetProperty("logprobs").GetProperty("content").EnumerateArray().ToList();
        Assert.Equal(r.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), tokens.Count);
        var joined = new StringBuilder();
        foreach (var t in tokens)
        {
            float lp = t.GetProperty("logprob").GetSingle();
            var top = t.GetProperty("top_logprobs").EnumerateArray().ToList();
            Assert.Equal(3, top.Count);
            // At temperature 0 the sampled token is the most likely one: the first alternative, same logprob.
            Assert.Equal(t.GetProperty("token").GetString(), top[0].GetProperty("token").GetString());
            Assert.Equal(lp, top[0].GetProperty("logprob").GetSingle());
            Assert.True(lp <= 0);
            Assert.True(top[0].GetProperty("logprob").GetSingle() >= top[1].GetProperty("logprob").GetSingle());
            Assert.True(top[1].GetProperty("logprob").GetSingle() >= top[2].GetProperty("logprob").GetSingle());
            var bytes = t.GetProperty("bytes").EnumerateArray().Select(b => (byte)b.GetInt32()).ToArray();
            Assert.Equal(t.GetProperty("token").GetString(), Encoding.UTF8.GetString(bytes));
            joined.Append(t.GetProperty("token").GetString());
        }
        Assert.Equal(content, joined.ToString());

        // Streamed: the same tokens, spread over the chunks that carry their text.
        var events = await StreamAsync("v1/chat/completions", Body(Chat(12, new { logprobs = true, top_logprobs = 3, stream = true })));
        var streamed = events.SelectMany(e => e.GetProperty("choices").EnumerateArray())
            .Where(c => c.TryGetProperty("logprobs", out var l) && l.ValueKind == JsonValueKind.Object)
            .SelectMany(c => c.GetProperty("logprobs").GetProperty("content").EnumerateArray())
            .Select(t => (t.GetProperty("token").GetString(), t.GetProperty("logprob").GetSingle())).ToList();
        Assert.Equal(tokens.Select(t => (t.GetProperty("token").GetString(), t.GetProperty("logprob").GetSingle())), streamed);
    }

    [Fact]
    public async Task CompletionLogprobsHaveTokensOffsetsAndTopDictionaries()
    {
        var r = await PostAsync("v1/completions", Body(new { prompt = Prompt, max_tokens = 10, temperature = 0, logprobs = 2 }));
        var choice = r.GetProperty("choices")[0];
        string text = choice.GetProperty("text").GetString()!;
        var lp = choice.GetProperty("logprobs");
        var tokens = lp.GetProperty("tokens").EnumerateArray().Select(t => t.GetString()!).ToList();
        var offsets = lp.GetProperty("text_offset").EnumerateArray().Select(t => t.GetInt32()).ToList();
        Assert.Equal(r.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), tokens.Count);
        Assert.Equal(tokens.Count, lp.GetProperty("token_logprobs").GetArrayLength());
        Assert.Equal(tokens.Count, lp.GetProperty("top_logprobs").GetArrayLength());
        for (int i = 0; i < tokens.Count; i++)
        {
            Assert.Equal(tokens[i], text.Substring(offsets[i], tokens[i].Length));
            var top = lp.GetProperty("top_logprobs")[i].EnumerateObject().ToList();
            Assert.InRange(top.Count, 1, 2);
            Assert.Equal(lp.GetProperty("token_logprobs")[i].GetSingle(), top.Max(p => p.Value.GetSingle()));
        }
        Assert.Equal(string.Concat(tokens), text);

        // Streamed: each chunk carries the logprobs of its own tokens, offsets counted over the whole text.
        var events = await StreamAsync("v1/completions", Body(new { prompt = Prompt, max_tokens = 10, temperature = 0, logprobs = 2, stream = true }));
        var chunks = events.SelectMany(e => e.GetProperty("choices").EnumerateArray())
            .Where(c => c.TryGetProperty("logprobs", out var l) && l.ValueKind == JsonValueKind.Object).Select(c => c.GetProperty("logprobs")).ToList();
        Assert.Equal(tokens, chunks.SelectMany(c => c.GetProperty("tokens").EnumerateArray()).Select(t => t.GetString()!));
        Assert.Equal(offsets, chunks.SelectMany(c => c.GetProperty("text_offset").EnumerateArray()).Select(t => t.GetInt32()));
    }

    [Fact]
    public async Task EchoPutsThePromptBeforeTheCompletion()
    {
        var plain = await PostAsync("v1/completions", Body(new { prompt = Prompt, max_tokens = 6, temperature = 0 }));
        var echoed = await PostAsync("v1/completions", Body(new { prompt = Prompt, max_tokens = 6, temperature = 0, echo = true }));
        Assert.Equal(Prompt + plain.GetProperty("choices")[0].GetProperty("text").GetString(), echoed.GetProperty("choices")[0].GetProperty("text").GetString());
        var events = await StreamAsync("v1/completions", Body(new { prompt = Prompt, max_tokens = 6, temperature = 0, echo = true, stream = true }));
        Assert.Equal(Prompt, events[0].GetProperty("choices")[0].GetProperty("text").GetString());
        Assert.Equal(echoed.GetProperty("choices")[0].GetProperty("text").GetString(),
            string.Concat(events.SelectMany(e => e.GetProperty("choices").EnumerateArray()).Select(c => c.GetProperty("text").GetString())));
    }

    [Fact]
    public async Task PenaltiesAndLogitBiasChangeTheGreedyText()
    {
        // A prompt that invites repetition: the penalties must change what greedy decoding picks.
        const string repetitive = "x = 1\nx = 1\nx = 1\nx = 1\n";
        async Task<string> Run(object extra)
        {
            var d = new Dictionary<string, object?> { ["prompt"] = repetitive, ["max_tokens"] = 16, ["temperature"] = 0 };
            foreach (var p in extra.GetType().GetProperties()) d[p.Name] = p.GetValue(extra);
            var r = await PostAsync("v1/completions", Body(d));
            return r.GetProperty("choices")[0].GetProperty("text").GetString()!;
        }
        var plain = await Run(new { });
        Assert.Equal(plain, await Run(new { frequency_penalty = 0.0, presence_penalty = 0.0 }));
        var frequency = await Run(new { frequency_penalty = 2.0 });
        var presence = await Run(new { presence_penalty = 2.0 });
        Assert.NotEqual(plain, frequency);
        Assert.NotEqual(plain, presence);

        // logit_bias -100 on the first greedy token: another token comes first.
        using var tok = await server.Http.PostAsync("tokenize", new StringContent(Body(new { content = plain }), Encoding.UTF8, "application/json"));
        int first = JsonDocument.Parse(await tok.Content.ReadAsStringAsync()).RootElement.GetProperty("tokens")[0].GetInt32();
        var biased = await Run(new { logit_bias = new Dictionary<string, int> { [first.ToString()] = -100 } });
        Assert.NotEqual(plain, biased);
    }
}
