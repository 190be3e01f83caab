using System.Text;
using System.Text.Json;
using Xunit;

namespace FitLM.Tests.Server;

/// <summary>`fitlm serve --lora PATH [--lora-scale S]`: the server answers with the adapter applied.</summary>
public class ServeLoraTests
{
    private static async Task<float[]> FirstTokenLogprobs(ServerProcess server)
    {
        var body = JsonSerializer.Serialize(new { prompt = "def fibonacci(n):\n", max_tokens = 1, temperature = 0, logprobs = 5 });
        using var resp = await server.Http.PostAsync("v1/completions", new StringContent(body, Encoding.UTF8, "application/json"));
        string text = await resp.Content.ReadAsStringAsync();
        Assert.True(resp.IsSuccessStatusCode, text);
        var top = JsonDocument.Parse(text).RootElement.GetProperty("choices")[0].GetProperty("logprobs").GetProperty("top_logprobs")[0];
        return top.EnumerateObject().Select(p => p.Value.GetSingle()).OrderDescending().ToArray();
    }

    [Fact]
    public async Task ServeAppliesTheAdapter_AndScaleZeroIsTheBase()
    {
        if (TestPaths.Shared is not { } shared) { Console.WriteLine("skipped: ../shared is absent"); return; }
        string adapter = Path.Combine(shared, "finetune"); // a PEFT folder for pycoder-29m, of which the demo model is a quantization
        string[] common = ["--ctx", "256", "--parallel", "1", "--api-key", ServerProcess.ApiKey, "-t", "2"];
        using var plain = ServerProcess.With(common);
        using var lora = ServerProcess.With([.. common, "--lora", adapter]);
        using var off = ServerProcess.With([.. common, "--lora", adapter, "--lora-scale", "0"]);
        var basis = await FirstTokenLogprobs(plain);
        var adapted = await FirstTokenLogprobs(lora);
        var zero = await FirstTokenLogprobs(off);
        Assert.Equal(basis, zero);
        Assert.NotEqual(basis, adapted);
    }
}
