using System.Text.Json;
using FitLM.Conversion;
using FitLM.Memory;
using FitLM.Model;
using FitLM.Tests.Cli;
using Xunit;

namespace FitLM.Tests.Memory;

/// <summary>
/// `fitlm plan` of a mixture of experts under a budget that holds half its experts: the expert cache's lines (experts
/// a layer of the count, cache bytes, expert size, policy, predicted hit rate with its note, bytes read per token),
/// the same fields in --json, and `fitlm info`'s MoE line. A synthesized tiny-moe (2 layers, 8 experts of 128, top-2).
/// </summary>
public sealed class ExpertPlanCliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-plan-moe-").FullName;
    private readonly string _model;

    public ExpertPlanCliTests()
    {
        _model = Path.Combine(_dir, "tiny-moe.gguf");
        SyntheticModel.Write(_model, SyntheticShape.Parse("tiny-moe"), "f16", TestPaths.DemoModel, seed: 2);
    }

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    /// <summary>The budget that leaves room for exactly half of every layer's experts at context 256, as the CLI counts it
    /// (with the expert readers' staging buffers, which only a cache has).</summary>
    private long HalfTheExperts()
    {
        using var src = ModelSource.Open(_model);
        var whole = LanguageModel.PlanLoad(_model, src, new LoadOptions { ContextLength = 256, MemoryBudget = 1L << 40 }, 256).Plan;
        return whole.TotalBytes - ExpertPlanner.StackBytes(src) / 2 + ExpertPlanner.ReaderBytes(src);
    }

    [Fact]
    public void PlanPrintsTheExpertCache()
    {
        long budget = HalfTheExperts();
        var r = CliRunner.Run("plan", "-m", _model, "--memory", budget.ToString(), "-c", "256", "--no-probe");
        Assert.True(r.ExitCode == 0, r.StdErr);
        string expert = Runtime.ProcessMemory.Format(3L * 256 * 128 * 2); // gate, up and down of 256 × 128, F16
        Assert.Contains($"expert cache: 4 of 8 experts per layer held (2 run per token), {Runtime.ProcessMemory.Format(4L * 2 * 3 * 256 * 128 * 2)} in slots of {expert}", r.StdOut);
        Assert.Contains("policy predict,", r.StdOut.Replace("\n", ","));
        Assert.Contains("predicted hit rate: 50.0% (uniform-routing estimate: 4 of 8 experts held", r.StdOut);
        Assert.Contains($"experts read per token: {Runtime.ProcessMemory.Format(2L * 2 * 3 * 256 * 128)}", r.StdOut); // half of 2 experts in 2 layers
        Assert.Contains("(4 of 8 experts a layer)", r.StdOut);
        Assert.Matches(@"layer 0\s+resident\+experts\s+", r.StdOut);

        var json = CliRunner.Run("plan", "-m", _model, "--memory", budget.ToString(), "-c", "256", "--no-probe", "--json");
        Assert.True(json.ExitCode == 0, json.StdErr);
        var e = JsonDocument.Parse(json.StdOut).RootElement.GetProperty("experts");
        Assert.Equal(4, e.GetProperty("slots_per_layer").GetInt32());
        Assert.Equal(8, e.GetProperty("expert_count").GetInt32());
        Assert.Equal(2, e.GetProperty("experts_used").GetInt32());
        Assert.Equal(3L * 256 * 128 * 2, e.GetProperty("expert_bytes").GetInt64());
        Assert.Equal(4L * 2 * 3 * 256 * 128 * 2, e.GetProperty("cache_bytes").GetInt64());
        Assert.Equal("predict", e.GetProperty("policy").GetString());
        Assert.Equal(0.5, e.GetProperty("predicted_hit_rate").GetDouble());
        Assert.Contains("uniform-routing estimate", e.GetProperty("hit_rate_note").GetString());
        Assert.Equal(2L * 2 * 3 * 256 * 128, e.GetProperty("read_bytes_per_token").GetInt64());
    }

    [Fact]
    public void AmpleBudgetHasNoExpertCache_AndInfoShowsTheMixture()
    {
        var r = CliRunner.Run("plan", "-m", _model, "--memory", "2GiB", "-c", "256", "--no-probe");
        Assert.True(r.ExitCode == 0, r.StdErr);
        Assert.DoesNotContain("expert cache", r.StdOut);
        var info = CliRunner.Run("info", "-m", _model);
        Assert.True(info.ExitCode == 0, info.StdErr);
        Assert.Contains("experts:        8 routed, 2 used per token, expert FFN 128, shared expert none, chosen weights renormalized to sum to 1", info.StdOut);
        Assert.Contains("q/k norm: yes (per head)", info.StdOut);
    }

    [Fact]
    public void InfoShowsGemmaAndPhi3Options()
    {
        if (TestPaths.Shared is not { } shared) return;
        string Info(string model)
        {
            var r = CliRunner.Run("info", "-m", Path.Combine(shared, "models", "zoo", model));
            Assert.True(r.ExitCode == 0, r.StdErr);
            return r.StdOut;
        }
        var gemma2 = Info("tiny-gemma2");
        Assert.Contains("sliding window: 8 tokens, period 2 (1 sliding layer, then a global one)", gemma2);
        Assert.Contains("soft-caps:      attention 50, final logits 30", gemma2);
        Assert.Contains("post-norms yes", gemma2);
        Assert.Contains("fused:          qkv yes, gate+up yes", Info("tiny-phi3"));
        Assert.Contains("chosen weights not renormalized", Info("tiny-olmoe"));
        Assert.Contains("shared expert 128", Info("tiny-qwen2moe"));
    }
}
