using FitLM.Compression;
using FitLM.Model;
using FitLM.Tests.Cli;
using Xunit;

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
}
