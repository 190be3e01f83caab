using FitLM.Tests.Cli;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Weights;

/// <summary>`--expert-cache`, `--expert-policy` and `--expert-margin` (the load group: run, bench, perplexity, plan, chat, serve): the statistics line, the same output, one-line errors.</summary>
public sealed class ExpertCacheCliTests(ITestOutputHelper output)
{
    private static string? Moe => TestPaths.Shared is { } s && Directory.Exists(Path.Combine(s, "models", "pycoder-moe")) ? Path.Combine(s, "models", "pycoder-moe") : null;

    private const string Prompt = "def softmax(x, axis=-1):\n";

    [Fact]
    public void Run_with_an_expert_cache_prints_its_statistics_and_the_same_ids()
    {
        if (Moe is not { } model) { output.WriteLine("../shared/models/pycoder-moe is absent"); return; }
        var resident = CliRunner.Run("run", "-m", model, "-p", Prompt, "-n", "24", "--temp", "0", "--ids");
        Assert.True(resident.ExitCode == 0, resident.StdErr);
        Assert.DoesNotContain("experts:", resident.StdErr, StringComparison.Ordinal);
        foreach (var policy in new[] { "lru", "predict-lru", "none" })
        {
            var r = CliRunner.Run("run", "-m", model, "-p", Prompt, "-n", "24", "--temp", "0", "--ids",
                "--expert-cache", "4608KiB", "--expert-policy", policy, "--verbose");
            Assert.True(r.ExitCode == 0, r.StdErr);
            Assert.Equal(resident.StdOut, r.StdOut);
            string line = r.StdErr.Split('\n').Single(l => l.StartsWith("experts:", StringComparison.Ordinal));
            output.WriteLine(line);
            Assert.StartsWith($"experts: {policy}, ", line, StringComparison.Ordinal);
            Assert.Matches(@"hit rate \d+\.\d% of \d+ uses, .+ read per token, I/O wait \d+\.\d+ ms per token", line);
        }
    }

    [Fact]
    public void Bench_and_perplexity_print_the_statistics_line()
    {
        if (Moe is not { } model) { output.WriteLine("../shared/models/pycoder-moe is absent"); return; }
        var bench = CliRunner.Run("bench", "-m", model, "-p", "8", "-n", "8", "-r", "1", "--no-bandwidth", "--expert-cache", "4608KiB", "--expert-policy", "predict");
        Assert.True(bench.ExitCode == 0, bench.StdErr);
        Assert.Contains("experts: predict, 14 of 32 in layer 0, 6 in the others cached", bench.StdErr, StringComparison.Ordinal);
        string text = Path.Combine(Path.GetTempPath(), $"fitlm-moe-{Guid.NewGuid():N}.txt");
        File.WriteAllText(text, string.Concat(Enumerable.Repeat("def f(x):\n    return x + 1\n", 40)));
        try
        {
            var resident = CliRunner.Run("perplexity", "-m", model, "-f", text, "-c", "64", "--chunks", "2");
            var cached = CliRunner.Run("perplexity", "-m", model, "-f", text, "-c", "64", "--chunks", "2", "--expert-cache", "4608KiB", "--expert-policy", "frequency");
            Assert.True(cached.ExitCode == 0, cached.StdErr);
            Assert.Equal(resident.StdOut, cached.StdOut); // the same Final estimate line
            Assert.Contains("experts: frequency, 8 of 32 per layer cached", cached.StdErr, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(text);
        }
    }

    [Fact]
    public void Plan_takes_the_flags_from_the_load_group()
    {
        if (Moe is not { } model) { output.WriteLine("../shared/models/pycoder-moe is absent"); return; }
        var r = CliRunner.Run("plan", "-m", model, "-c", "256", "--expert-cache", "4608KiB", "--expert-policy", "frequency");
        Assert.True(r.ExitCode == 0, r.StdErr);
        Assert.Contains("expert cache: 8 of 32 experts per layer held", r.StdOut, StringComparison.Ordinal);
        Assert.Contains("policy frequency", r.StdOut, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--expert-policy", "sometimes", "--expert-policy 'sometimes' is not an expert policy (lru, frequency, predict, predict-lru, none)")]
    [InlineData("--expert-cache", "lots", "'lots' is not a memory size")]
    [InlineData("--expert-margin", "-1", "--expert-margin -1 is out of range (0..64)")]
    public void Bad_flag_values_fail_in_one_line(string flag, string value, string message)
    {
        var r = CliRunner.Run("run", "-m", TestPaths.DemoModel, "-p", "x", "-n", "1", flag, value);
        Assert.Equal(1, r.ExitCode);
        Assert.Equal($"error: {message}", r.StdErr.Trim().Split('\n').Single().Split(" (examples")[0]);
    }

    [Fact]
    public void An_expert_cache_on_a_dense_model_fails_in_one_line()
    {
        var r = CliRunner.Run("run", "-m", TestPaths.DemoModel, "-p", "x", "-n", "1", "--expert-cache", "1MiB");
        Assert.Equal(1, r.ExitCode);
        var line = Assert.Single(r.StdErr.Trim().Split('\n'));
        Assert.Contains("needs a mixture of experts", line, StringComparison.Ordinal);
    }
}
