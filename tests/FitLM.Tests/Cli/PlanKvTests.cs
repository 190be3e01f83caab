using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Cli;

/// <summary>
/// Issue 17, acceptance 3: `fitlm plan --kv` counts the KV cache in the chosen type, so at one budget a compressed
/// type buys a longer context (or more resident weights) than f16, `--json` reports kv_bytes_per_token, and `run`
/// with the same flags loads the context `plan` printed. Before, plan counted float32 whatever --kv said: f16 and
/// kivi2 got the same plan.
/// </summary>
public sealed partial class PlanKvTests(ITestOutputHelper output)
{
    /// <summary>Two MiB above the demo model's f32 minimum: f16 must shorten the context there, kivi2 much less.</summary>
    private const string Budget = "78MiB";

    private static JsonElement PlanJson(string kv)
    {
        var r = CliRunner.Run("plan", "-m", TestPaths.DemoModel, "--memory", Budget, "--kv", kv, "--no-probe", "--json");
        Assert.True(r.ExitCode == 0, r.StdErr);
        return JsonDocument.Parse(r.StdOut).RootElement.Clone();
    }

    [Fact]
    public void CompressedKvBuysContextOrResidentWeights()
    {
        var f16 = PlanJson("f16");
        var kivi2 = PlanJson("kivi2");
        int ctxF16 = f16.GetProperty("context").GetInt32(), ctxKivi2 = kivi2.GetProperty("context").GetInt32();
        long resF16 = f16.GetProperty("resident_weight_bytes").GetInt64(), resKivi2 = kivi2.GetProperty("resident_weight_bytes").GetInt64();
        double perTokenF16 = f16.GetProperty("kv_bytes_per_token").GetDouble(), perTokenKivi2 = kivi2.GetProperty("kv_bytes_per_token").GetDouble();
        output.WriteLine($"{Budget}: f16 context {ctxF16}, resident {resF16}, {perTokenF16} B/token; kivi2 context {ctxKivi2}, resident {resKivi2}, {perTokenKivi2} B/token");
        Assert.Equal("f16", f16.GetProperty("kv_type").GetString());
        Assert.Equal("kivi2", kivi2.GetProperty("kv_type").GetString());
        Assert.Equal(4096, perTokenF16); // 8 layers × (K + V) × 2 KV heads × 64 × 2 bytes
        Assert.True(perTokenKivi2 < perTokenF16 / 3, $"kivi2 {perTokenKivi2} B/token, f16 {perTokenF16}");
        Assert.True(ctxKivi2 > ctxF16 || (ctxKivi2 == ctxF16 && resKivi2 > resF16),
            $"kivi2 (context {ctxKivi2}, resident {resKivi2}) bought nothing over f16 (context {ctxF16}, resident {resF16})");
        Assert.True(kivi2.GetProperty("total_bytes").GetInt64() <= kivi2.GetProperty("budget_bytes").GetInt64());
    }

    [Theory]
    [InlineData("f16")]
    [InlineData("kivi2")]
    public void PlanTextNamesTheKvTypeAndRunLoadsThePlannedContext(string kv)
    {
        var plan = CliRunner.Run("plan", "-m", TestPaths.DemoModel, "--memory", Budget, "--kv", kv, "--no-probe");
        Assert.True(plan.ExitCode == 0, plan.StdErr);
        Assert.Matches(KvLine(), plan.StdOut);
        Assert.Contains($"({kv}", plan.StdOut);
        int planContext = int.Parse(PlanContext().Match(plan.StdOut).Groups[1].Value, CultureInfo.InvariantCulture);

        var run = CliRunner.Run("run", "-m", TestPaths.DemoModel, "-p", "hi", "-n", "1", "--memory", Budget, "--kv", kv);
        Assert.True(run.ExitCode == 0, run.StdErr);
        var ctx = RunContext().Match(run.StdErr);
        int runContext = ctx.Success ? int.Parse(ctx.Groups[1].Value, CultureInfo.InvariantCulture) : 2048; // the demo model's default
        output.WriteLine($"plan context {planContext}, run context {runContext}");
        Assert.Equal(planContext, runContext);
    }

    [GeneratedRegex(@"KV cache\s+\S+ \S+\s+\(\S+.*, [0-9.]+ bytes per token\)")]
    private static partial Regex KvLine();
    [GeneratedRegex(@"context (\d+)")]
    private static partial Regex PlanContext();
    [GeneratedRegex(@"context: (\d+) positions")]
    private static partial Regex RunContext();
}
