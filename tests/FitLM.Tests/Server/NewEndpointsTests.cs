using System.ClientModel;
using System.Text;
using System.Text.Json;
using OpenAI;
using OpenAI.Chat;
using OpenAI.Embeddings;
using OpenAI.Models;
using Xunit;

namespace FitLM.Tests.Server;

/// <summary>GET /v1/models/{id} (ids with dots), GET /props, POST /v1/embeddings, and routes that used to answer an empty body.</summary>
[Collection(ServerCollection.Name)]
public class NewEndpointsTests(ServerProcess server)
{
    private const string ModelId = "pycoder-29m-q4_k_m.gguf";
    private const int Dim = 512; // the demo model's hidden size

    private OpenAIClientOptions Options => new() { Endpoint = new Uri(server.Address, "v1") };

    private static async Task<(int Status, JsonElement Body)> Read(HttpResponseMessage resp)
    {
        string text = await resp.Content.ReadAsStringAsync();
        Assert.False(string.IsNullOrWhiteSpace(text), $"HTTP {(int)resp.StatusCode} with an empty body");
        return ((int)resp.StatusCode, JsonDocument.Parse(text).RootElement.Clone());
    }

    [Theory]
    [InlineData(ModelId)]
    [InlineData("pycoder-29m-q4_k_m")]
    [InlineData("fitlm")]
    public async Task GetModelByIdAnswersForEachNameOfTheModel(string id)
    {
        var (status, body) = await Read(await server.Http.GetAsync($"v1/models/{id}"));
        Assert.Equal(200, status);
        Assert.Equal(ModelId, body.GetProperty("id").GetString());
        Assert.Equal("model", body.GetProperty("object").GetString());
    }

    [Theory]
    [InlineData("GET", "v1/models/other.gguf", 404, "model_not_found")]
    [InlineData("GET", "files/x.gguf", 404, "not_found")]
    [InlineData("POST", "v1/models/pycoder-29m-q4_k_m.gguf", 404, "not_found")]
    [InlineData("GET", "v1/chat/completions", 404, "not_found")]
    [InlineData("DELETE", "props", 404, "not_found")]
    public async Task UnknownRoutesAndIdsGetAnOpenAiError(string method, string path, int expected, string code)
    {
        using var req = new HttpRequestMessage(new HttpMethod(method), path);
        var (status, body) = await Read(await server.Http.SendAsync(req));
        Assert.Equal(expected, status);
        Assert.Equal(code, body.GetProperty("error").GetProperty("code").GetString());
        Assert.False(string.IsNullOrWhiteSpace(body.GetProperty("error").GetProperty("message").GetString()));
    }

    [Fact]
    public void OpenAiSdkGetsTheModelAndEmbeddings()
    {
        var models = new OpenAIModelClient(new ApiKeyCredential(ServerProcess.ApiKey), Options);
        OpenAIModel model = models.GetModel(ModelId);
        Assert.Equal(ModelId, model.Id);
        var e = Assert.Throws<ClientResultException>(() => models.GetModel("gpt-4o"));
        Assert.Equal(404, e.Status);

        // The SDK asks for base64 and decodes it: the floats must be the ones the float format gives.
        var client = new EmbeddingClient(ModelId, new ApiKeyCredential(ServerProcess.ApiKey), Options);
        OpenAIEmbedding one = client.GenerateEmbedding("def fibonacci(n):");
        var v = one.ToFloats().ToArray();
        Assert.Equal(Dim, v.Length);
        Assert.Equal(1.0, Math.Sqrt(v.Sum(x => (double)x * x)), 4);
        OpenAIEmbeddingCollection many = client.GenerateEmbeddings(["import os", "def fibonacci(n):"]);
        Assert.Equal(2, many.Count);
        Assert.Equal(v, many[1].ToFloats().ToArray());
        Assert.True(many.Usage.InputTokenCount > 4);
    }

    [Fact]
    public async Task EmbeddingsAreUnitMeanPooledAndIndependentOfTheBatch()
    {
        async Task<JsonElement> Embed(object body)
        {
            var (status, json) = await Read(await server.Http.PostAsync("v1/embeddings", new StringContent(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json")));
            Assert.True(status == 200, json.ToString());
            return json;
        }
        static float[] Floats(JsonElement item) => item.GetProperty("embedding").EnumerateArray().Select(x => x.GetSingle()).ToArray();

        var alone = await Embed(new { input = "class Stack:" });
        var a = Floats(alone.GetProperty("data")[0]);
        Assert.Equal(Dim, a.Length);
        Assert.Equal("list", alone.GetProperty("object").GetString());
        Assert.Equal("embedding", alone.GetProperty("data")[0].GetProperty("object").GetString());

        var batch = await Embed(new { input = new[] { "import sys", "class Stack:", "x = [1, 2, 3]" } });
        Assert.Equal(3, batch.GetProperty("data").GetArrayLength());
        Assert.Equal(a, Floats(batch.GetProperty("data")[1]));
        Assert.NotEqual(a, Floats(batch.GetProperty("data")[0]));

        // Token ids give the same as the text they tokenize to (BOS included); base64 holds the same floats.
        using var tok = await server.Http.PostAsync("tokenize", new StringContent("""{"content": "class Stack:", "add_special": true}""", Encoding.UTF8, "application/json"));
        var ids = JsonDocument.Parse(await tok.Content.ReadAsStringAsync()).RootElement.GetProperty("tokens").EnumerateArray().Select(x => x.GetInt32()).ToArray();
        var byIds = await Embed(new { input = ids });
        Assert.Equal(a, Floats(byIds.GetProperty("data")[0]));
        Assert.Equal(ids.Length, byIds.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        var b64 = await Embed(new { input = "class Stack:", encoding_format = "base64" });
        var bytes = Convert.FromBase64String(b64.GetProperty("data")[0].GetProperty("embedding").GetString()!);
        Assert.Equal(a, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes).ToArray());
    }

    [Fact]
    public async Task PropsDescribeTheServerAsLlamaCppDoes()
    {
        var (status, props) = await Read(await server.Http.GetAsync("props"));
        Assert.Equal(200, status);
        Assert.Equal(512, props.GetProperty("default_generation_settings").GetProperty("n_ctx").GetInt32());
        Assert.Equal(1.0f, props.GetProperty("default_generation_settings").GetProperty("params").GetProperty("temperature").GetSingle());
        Assert.Equal(8, props.GetProperty("total_slots").GetInt32());
        Assert.EndsWith(ModelId, props.GetProperty("model_path").GetString());
        Assert.False(string.IsNullOrEmpty(props.GetProperty("chat_template").GetString()));
        Assert.StartsWith("fitlm", props.GetProperty("build_info").GetString());
        Assert.Equal("<|bos|>", props.GetProperty("bos_token").GetString());
    }

    [Fact]
    public void OpenAiSdkReadsChatLogprobs()
    {
        var chat = new ChatClient(ModelId, new ApiKeyCredential(ServerProcess.ApiKey), Options);
        var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 8, IncludeLogProbabilities = true, TopLogProbabilityCount = 2 };
        OpenAI.Chat.ChatCompletion c = chat.CompleteChat([new UserChatMessage("import os\n")], options);
        Assert.Equal(c.Usage.OutputTokenCount, c.ContentTokenLogProbabilities.Count);
        Assert.All(c.ContentTokenLogProbabilities, t => Assert.Equal(2, t.TopLogProbabilities.Count));
        Assert.Equal(c.Content[0].Text, string.Concat(c.ContentTokenLogProbabilities.Select(t => t.Token)));
    }
}
