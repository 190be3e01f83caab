using System.Text.Json;
using FitLM.Compression;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Tensors;
using FitLM.Tests.Cli;
using Xunit;
using FitLM.Memory;
using FitLM.Weights;

namespace FitLM.Tests.BitStack;

/// <summary>`fitlm compress`, `fitlm ladder` and `--weights` on the real program.</summary>
public class StackCliTests
{
    private static StackFixture F => StackFixture.Shared;

    [Fact]
    public void CompressWritesAStackThatInfoDescribes()
    {
        string calib = Path.Combine(F.Dir, "calib.txt");
        File.WriteAllText(calib, F.CalibText);
        string output = Path.Combine(F.Dir, "cli.bitstack.gguf");
        var r = CliRunner.Run("compress", "-m", F.Original, "--method", "bitstack", "--calib", calib, "-o", output,
            "--blocks", "2", "--rank", "1", "--calib-ctx", "32", "--calib-windows", "2", "--score-ctx", "32", "--score-windows", "1", "--score-levels", "1", "-t", "2");
        Assert.True(r.ExitCode == 0, r.StdErr);
        Assert.Contains("wrote", r.StdOut);
        Assert.Contains("size ladder", r.StdOut);
        Assert.True(File.Exists(output));
        Assert.Empty(Directory.GetFiles(F.Dir, "cli.bitstack.gguf.tmp-*"));

        var info = CliRunner.Run("info", "-m", output);
        Assert.True(info.ExitCode == 0, info.StdErr);
        Assert.Contains("stack (BitStack): 14 matrices x 2 blocks", info.StdOut);
        Assert.Contains("size ladder", info.StdOut);
    }

    [Fact]
    public void WeightsPicksThePrefixForRunAndPerplexity()
    {
        using var src = StackFixture.Open(F.Stacked);
        var layout = StackLayout.Read(src);
        long bytes = layout.BytesAt(layout.BaseEntries + 4);
        var run = CliRunner.Run("run", "-m", F.Stacked, "--weights", bytes.ToString(), "-p", "def f(x):", "-n", "4", "--temp", "0", "-t", "2");
        Assert.True(run.ExitCode == 0, run.StdErr);
        Assert.Contains($"stack: {layout.BaseEntries + 4}/{layout.Entries.Count} blocks", run.StdErr);

        string text = Path.Combine(F.Dir, "eval.txt");
        File.WriteAllText(text, F.CalibText);
        var ppl = CliRunner.Run("perplexity", "-m", F.Stacked, "-f", text, "-c", "32", "--chunks", "2", "--weights", bytes.ToString(), "--stack-cache", "none", "-t", "2");
        Assert.True(ppl.ExitCode == 0, ppl.StdErr);
        Assert.Contains("Final estimate: PPL", ppl.StdOut);
        Assert.Contains("direct sign x low-rank kernel", ppl.StdErr);

        var small = CliRunner.Run("run", "-m", F.Stacked, "--weights", "1MiB", "-p", "x", "-n", "1");
        Assert.Equal(1, small.ExitCode);
        Assert.StartsWith("error:", small.StdErr);
        Assert.Contains("smallest whole model", small.StdErr);

        var bad = CliRunner.Run("run", "-m", F.Stacked, "--stack-cache", "q9_x", "-p", "x", "-n", "1");
        Assert.Equal(1, bad.ExitCode);
        Assert.Contains("--stack-cache", bad.StdErr);
    }

    [Fact]
    public void LadderWritesATableAndAPlot()
    {
        string text = Path.Combine(F.Dir, "ladder.txt");
        File.WriteAllText(text, F.CalibText);
        string svg = Path.Combine(F.Dir, "ladder.svg");
        string table = Path.Combine(F.Dir, "ladder.md");
        using var src = StackFixture.Open(F.Stacked);
        var layout = StackLayout.Read(src);
        double mid = Math.Round((layout.TotalBitsPerWeight(layout.BaseEntries) + layout.TotalBitsPerWeight(layout.Entries.Count)) / 2, 2);
        string bits = mid.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var r = CliRunner.Run("ladder", "-m", F.Stacked, "-f", text, "-c", "32", "--chunks", "2", "--bits", $"{bits},100",
            "--compare", F.Original, "--plot", svg, "--table", table, "-t", "2");
        Assert.True(r.ExitCode == 0, r.StdErr);
        Assert.Contains($"| BitStack {bits} bits/weight |", r.StdOut);
        Assert.Contains("skipping = tiny-f16.gguf", r.StdErr); // the f16 file is larger than the whole stack
        Assert.Contains("| tiny-f16.gguf |", r.StdOut);
        Assert.Contains("skipping 100 bits/weight", r.StdErr);
        Assert.StartsWith("<svg", File.ReadAllText(svg));
        Assert.Equal(r.StdOut, File.ReadAllText(table));
    }

    [Fact]
    public void InfoAndBenchDescribeTheModelNotItsBlockTensors()
    {
        using var original = StackFixture.Open(F.Original);
        using var src = StackFixture.Open(F.Stacked);
        var layout = StackLayout.Read(src);
        long parameters = original.Tensors.Sum(t => t.Elements);
        var info = CliRunner.Run("info", "-m", F.Stacked);
        Assert.True(info.ExitCode == 0, info.StdErr);
        Assert.Contains($"parameters:     {parameters:N0} ", info.StdOut);
        Assert.Contains($"weights:        {ProcessMemory.Format(layout.BytesAt(layout.BaseEntries))} to {ProcessMemory.Format(layout.BytesAt(layout.Entries.Count))}", info.StdOut);

        int k = layout.BaseEntries + 3;
        string weights = layout.BytesAt(k).ToString();
        // Q8_0 caches (the default): JSON; the direct kernel: the table. Each multiplies different bytes per token.
        var json = CliRunner.Run("bench", "-m", F.Stacked, "--weights", weights, "-p", "0", "-n", "2", "-r", "1", "--json", "--no-bandwidth", "-t", "2");
        Assert.True(json.ExitCode == 0, json.StdErr);
        var row = JsonDocument.Parse(json.StdOut).RootElement[0];
        Assert.Equal(parameters, row.GetProperty("model_n_params").GetInt64());
        Assert.Equal(layout.BytesAt(k), row.GetProperty("model_size").GetInt64());
        Assert.Equal(StackPlan.Of(layout, k, GgmlType.Q8_0).BytesPerToken, row.GetProperty("weight_bytes_per_token").GetInt64());

        var table = CliRunner.Run("bench", "-m", F.Stacked, "--weights", weights, "--stack-cache", "none", "-p", "0", "-n", "2", "-r", "1", "--no-bandwidth", "-t", "2");
        Assert.True(table.ExitCode == 0, table.StdErr);
        Assert.Contains($"| {ProcessMemory.Format(layout.BytesAt(k)),10} | {parameters / 1e6,8:F2} M |", table.StdOut);
        long direct = StackPlan.Of(layout, k, null).BytesPerToken;
        Assert.Equal(layout.FixedBytesPerToken + layout.BlockBytesBetween(0, k), direct);
        Assert.Contains($"decode reads {ProcessMemory.Format(direct)} of weights per token", table.StdOut);
    }

    [Fact]
    public void PlanReportsTheBlocksRunLoads()
    {
        using var src = StackFixture.Open(F.Stacked);
        var layout = StackLayout.Read(src);
        // The same runtime for both commands: measured RSS differs a little from process to process.
        string[] common = ["-m", F.Stacked, "-c", "32", "--runtime-memory", "40MiB", "-t", "2"];
        JsonElement Plan(string budget)
        {
            var r = CliRunner.Run(["plan", .. common, "--memory", budget, "--json", "--no-probe"]);
            Assert.True(r.ExitCode == 0, r.StdErr);
            return JsonDocument.Parse(r.StdOut).RootElement;
        }
        var whole = Plan("1TiB");
        Assert.Equal(layout.Entries.Count, whole.GetProperty("stack").GetProperty("blocks").GetInt32());
        long total = whole.GetProperty("total_bytes").GetInt64();

        var tooSmall = CliRunner.Run(["plan", .. common, "--memory", "41MiB", "--no-probe"]);
        Assert.Equal(1, tooSmall.ExitCode);
        Assert.Single(tooSmall.ErrorLines);
        string smallest = System.Text.RegularExpressions.Regex.Match(tooSmall.StdErr, @"give --memory (\d+MiB) or more").Groups[1].Value;
        Assert.NotEmpty(smallest);

        int low = layout.BaseEntries + 1, mid = (layout.BaseEntries + layout.Entries.Count) / 2;
        string lowBudget = (total - layout.BlockBytesBetween(low, layout.Entries.Count)).ToString();
        string midBudget = (total - layout.BlockBytesBetween(mid, layout.Entries.Count)).ToString();
        var seen = new HashSet<int>();
        // The smallest budget the error names works (it may hold more than the smallest model: it is rounded up to a MiB).
        foreach (var budget in new[] { smallest, lowBudget, midBudget })
        {
            var plan = Plan(budget).GetProperty("stack");
            int blocks = plan.GetProperty("blocks").GetInt32();
            seen.Add(blocks);
            var run = CliRunner.Run(["run", .. common, "--memory", budget, "-p", "def f(x):", "-n", "2", "--temp", "0"]);
            Assert.True(run.ExitCode == 0, run.StdErr);
            Assert.Contains($"stack: {blocks}/{layout.Entries.Count} blocks, weights {ProcessMemory.Format(plan.GetProperty("weight_bytes").GetInt64())} ", run.StdErr);
            Assert.Contains(plan.GetProperty("cache_type").GetString() == "none" ? "direct sign x low-rank kernel" : "cached as Q8_0", run.StdErr);
        }
        Assert.Contains(low, seen);
        Assert.Contains(mid, seen);

        // The text report: blocks, weights, memory parts and a predicted speed.
        var text = CliRunner.Run(["plan", .. common, "--memory", midBudget]);
        Assert.True(text.ExitCode == 0, text.StdErr);
        Assert.Contains($"stack: {mid}/{layout.Entries.Count} blocks", text.StdOut);
        Assert.Contains($"({layout.BytesAt(mid):N0} bytes: embeddings, head, norms and {mid} blocks)", text.StdOut);
        foreach (var part in new[] { "runtime (fixed, measured)", "KV cache", "matrix caches", "total", "weights multiplied per token", "predicted decode:" })
            Assert.Contains(part, text.StdOut);
    }
}
