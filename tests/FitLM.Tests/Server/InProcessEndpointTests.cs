using System.Numerics.Tensors;
using System.Text;
using System.Text.Json;
using FitLM.Memory;
using FitLM.Model;
using FitLM.Server;
using Xunit;

namespace FitLM.Tests.Server;

/// <summary>The server in the test process: a server fault's answer, and embeddings checked against the model's own logits.</summary>
public class InProcessEndpointTests
{
    [Fact]
    public async Task AServerFaultIsA500WithAMessageALogLineAndAMetric()
    {
        using var lm = LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = 256, LogitRows = 1 });
        var log = new StringWriter();
        await using var server = await FitLMServer.StartAsync(lm, new ServerOptions
        {
            Port = 0, Parallel = 1, Log = TextWriter.Synchronized(log),
            BeforeEndpoint = http => { if (http.Request.Path == "/tokenize") throw new InvalidOperationException("injected fault"); },
        });
        using var http = new HttpClient { BaseAddress = server.Address };
        using var resp = await http.PostAsync("tokenize", new StringContent("""{"content": "x"}""", Encoding.UTF8, "application/json"));
        string text = await resp.Content.ReadAsStringAsync();
        Assert.Equal(500, (int)resp.StatusCode);
        var error = JsonDocument.Parse(text).RootElement.GetProperty("error");
        Assert.Contains("injected fault", error.GetProperty("message").GetString());
        Assert.Equal("server_error", error.GetProperty("type").GetString());
        Assert.Contains("injected fault", log.ToString());
        Assert.Contains("fitlm_internal_errors_total 1\n", await http.GetStringAsync("metrics"));
        // Other endpoints are unaffected.
        using var ok = await http.PostAsync("detokenize", new StringContent("""{"tokens": [100]}""", Encoding.UTF8, "application/json"));
        Assert.Equal(200, (int)ok.StatusCode);
    }

    /// <summary>
    /// max_tokens past the context is clamped to what fits, as llama.cpp and vLLM do (it was a 400). In process:
    /// the long prompt's prefill would raise the shared test server's peak memory, which another test bounds.
    /// </summary>
    [Fact]
    public async Task MaxTokensPastTheContextIsClampedToWhatFits()
    {
        using var lm = LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = 128, LogitRows = 1 });
        await using var server = await FitLMServer.StartAsync(lm, new ServerOptions { Port = 0, Parallel = 1, Log = TextWriter.Null });
        using var http = new HttpClient { BaseAddress = server.Address };
        string prompt = string.Concat(Enumerable.Repeat("def f(a, b):\n    return a + b\n\n", 7));
        using var resp = await http.PostAsync("v1/completions", new StringContent(JsonSerializer.Serialize(new { prompt, max_tokens = 100_000, temperature = 0 }), Encoding.UTF8, "application/json"));
        string text = await resp.Content.ReadAsStringAsync();
        Assert.True((int)resp.StatusCode == 200, text);
        var r = JsonDocument.Parse(text).RootElement;
        int promptTokens = r.GetProperty("usage").GetProperty("prompt_tokens").GetInt32(), completion = r.GetProperty("usage").GetProperty("completion_tokens").GetInt32();
        Assert.InRange(promptTokens, 64, 127);
        Assert.InRange(completion, 1, 128 - promptTokens);
        if (r.GetProperty("choices")[0].GetProperty("finish_reason").GetString() == "length") Assert.Equal(128, promptTokens + completion);
    }

    /// <summary>
    /// logits = W_out · h for the final normed hidden state h, and W_out is linear: the embedding of a text (the
    /// unit-length mean of its h) times W_out must point the way the mean of its positions' logits does.
    /// </summary>
    [Fact]
    public async Task EmbeddingIsTheMeanOfTheFinalNormedHiddenStates()
    {
        using var lm = LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = 256, LogitRows = 1 });
        int[] ids = lm.Tokenizer.Encode("def add(a, b):", addSpecial: true, parseSpecial: true);
        int vocab = lm.Config.Vocab;
        var logits = new float[ids.Length * vocab];
        lm.Transformer.Forward(ids, 0, logits, 0);
        var meanLogits = new float[vocab];
        for (int t = 0; t < ids.Length; t++) TensorPrimitives.Add(meanLogits, logits.AsSpan(t * vocab, vocab), meanLogits);

        await using var server = await FitLMServer.StartAsync(lm, new ServerOptions { Port = 0, Parallel = 1, Log = TextWriter.Null });
        using var http = new HttpClient { BaseAddress = server.Address };
        using var resp = await http.PostAsync("v1/embeddings", new StringContent(JsonSerializer.Serialize(new { input = ids }), Encoding.UTF8, "application/json"));
        Assert.Equal(200, (int)resp.StatusCode);
        var e = JsonDocument.Parse(await resp.Content.ReadAsStringAsync()).RootElement.GetProperty("data")[0].GetProperty("embedding")
            .EnumerateArray().Select(x => x.GetSingle()).ToArray();
        Assert.Equal(1f, TensorPrimitives.Norm(e), 4);

        var projected = new float[vocab];
        lm.Weights.Matrix("output.weight").Multiply(e, projected, 1);
        double cosine = TensorPrimitives.CosineSimilarity(projected, meanLogits);
        Assert.True(cosine > 0.9999, $"cosine {cosine}");
        // The last position alone points elsewhere: the pooling is over all positions.
        Assert.True(TensorPrimitives.CosineSimilarity(projected, logits.AsSpan((ids.Length - 1) * vocab, vocab)) < 0.999);
    }
}
