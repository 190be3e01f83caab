using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Xunit;

namespace FitLM.Tests.Server;

/// <summary>
/// `fitlm serve` while its memory budget moves (issue 17, acceptance 4; docs/variable-memory.md): POST /budget cuts it
/// and gives it back; running requests finish in full, a request that arrives while memory is short waits in the queue
/// and runs once it is back; /metrics and GET /budget show the budget and the adaptations.
/// </summary>
public class ServerBudgetTests
{
    private static StringContent Json(object o) => new(JsonSerializer.Serialize(o), Encoding.UTF8, "application/json");

    private static async Task<JsonElement> SetBudget(ServerProcess server, string memory)
    {
        using var resp = await server.Http.PostAsync("budget", Json(new { memory }));
        string text = await resp.Content.ReadAsStringAsync();
        Assert.True(resp.IsSuccessStatusCode, text);
        return JsonDocument.Parse(text).RootElement.Clone();
    }

    private static async Task WaitForMetric(ServerProcess server, string name, Func<double, bool> condition)
    {
        // No timing assertion: the condition is what is tested, the minute only bounds a hang.
        var deadline = DateTime.UtcNow.AddMinutes(1);
        double value;
        while (!condition(value = await server.MetricAsync(name)))
        {
            if (DateTime.UtcNow > deadline) throw new Xunit.Sdk.XunitException($"{name} stayed at {value}");
            await Task.Delay(20);
        }
    }

    [Fact]
    public async Task RunningRequestsSurviveABudgetCutAndNewOnesQueueUntilItComesBack()
    {
        using var server = ServerProcess.With("--memory", "1GiB", "--ctx", "512", "--parallel", "4", "--api-key", ServerProcess.ApiKey, "-t", "2", "--verbose");
        const int Tokens = 300;
        var a = server.StreamChatAsync("Write a Python function that sorts a list.", Tokens, ignoreEos: true);
        var b = server.StreamChatAsync("Write a Python class for a stack.", Tokens, ignoreEos: true);
        await WaitForMetric(server, "fitlm_active_sequences", v => v >= 2);

        // 1 GiB -> 256 MiB while they decode.
        var cut = await SetBudget(server, "256MiB");
        Assert.Equal(256L << 20, cut.GetProperty("budget_bytes").GetInt64());
        Assert.Equal(256L << 20, await server.MetricAsync("fitlm_memory_budget_bytes"));

        // Below what the process needs: every lever at its minimum (KV requantized under the running requests,
        // layers streamed, the pool closed to newcomers). A new request waits rather than fails.
        var low = await SetBudget(server, "64MiB");
        Assert.Equal(64L << 20, low.GetProperty("budget_bytes").GetInt64());
        string line = low.GetProperty("last_adaptation").GetString()!;
        Assert.Contains("kv f32 -> f16", line);
        Assert.Contains("-> 0 of 8 layers", line);
        Assert.Contains("2 running keep theirs", line);
        Assert.Equal("kivi2", low.GetProperty("kv_type").GetString());
        var c = server.StreamChatAsync("def fibonacci(n):", 8);
        await WaitForMetric(server, "fitlm_queue_depth", v => v >= 1);
        Assert.Equal(0, await server.MetricAsync("fitlm_kv_bytes_capacity"));

        // And back: the queued request runs, every request finishes in full.
        var back = await SetBudget(server, "1GiB");
        Assert.Equal(1L << 30, back.GetProperty("budget_bytes").GetInt64());
        var (_, finishA, tokensA) = await a;
        var (_, finishB, tokensB) = await b;
        var (_, finishC, tokensC) = await c;
        Assert.Equal(("length", Tokens), (finishA, tokensA));
        Assert.Equal(("length", Tokens), (finishB, tokensB));
        Assert.True(finishC is "length" or "stop", $"c: {finishC} after {tokensC}");
        Assert.Equal(0, await server.MetricAsync("fitlm_requests_failed_total"));
        // 1 GiB -> 256 MiB changed nothing (the model fits): two adaptations, the cut to 64 MiB and the way back.
        Assert.Equal(2, await server.MetricAsync("fitlm_memory_adaptations_total"));
        Assert.Equal(1L << 30, await server.MetricAsync("fitlm_memory_budget_bytes"));
        Assert.Equal(32, await server.MetricAsync("fitlm_kv_bits_per_element")); // the loaded f32 again

        var state = JsonDocument.Parse(await server.Http.GetStringAsync("budget")).RootElement;
        Assert.Equal(2, state.GetProperty("adaptations").GetInt32());
        Assert.Contains("budget 64.0 MiB -> 1.00 GiB", state.GetProperty("last_adaptation").GetString());
        // --verbose: one line per adaptation in the server's log.
        Assert.Equal(2, server.Log.Count(l => l.Contains("] budget ", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task TheBudgetEndpointNeedsTheKey()
    {
        using var open = ServerProcess.With("--memory", "512MiB", "--ctx", "256", "--parallel", "1", "-t", "2");
        open.Http.DefaultRequestHeaders.Authorization = null;
        using (var resp = await open.Http.PostAsync("budget", Json(new { memory = "256MiB" })))
        {
            Assert.Equal(403, (int)resp.StatusCode);
            Assert.Contains("--api-key", await resp.Content.ReadAsStringAsync());
        }
        Assert.Equal(512L << 20, await open.MetricAsync("fitlm_memory_budget_bytes"));

        using var keyed = ServerProcess.With("--memory", "512MiB", "--ctx", "256", "--parallel", "1", "-t", "2", "--api-key", ServerProcess.ApiKey);
        var anonymous = new HttpClient { BaseAddress = keyed.Address };
        using (var resp = await anonymous.PostAsync("budget", Json(new { memory = "256MiB" })))
            Assert.Equal(401, (int)resp.StatusCode);
        using (var resp = await keyed.Http.PostAsync("budget", Json(new { memory = "lots" })))
        {
            Assert.Equal(400, (int)resp.StatusCode);
            Assert.Contains("not a memory size", await resp.Content.ReadAsStringAsync());
        }
        using (var resp = await keyed.Http.PostAsync("budget", Json(new { memory = "follow" })))
            Assert.Equal(400, (int)resp.StatusCode); // a fixed --memory has no source to follow
        keyed.Http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", ServerProcess.ApiKey);
        Assert.Equal(512L << 20, JsonDocument.Parse(await keyed.Http.GetStringAsync("budget")).RootElement.GetProperty("budget_bytes").GetInt64());
    }
}
