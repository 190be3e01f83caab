using System.Globalization;
using System.Text.RegularExpressions;
using Xunit;

namespace FitLM.Tests.Cli;

public sealed partial class BudgetTests
{
    /// <summary>
    /// `fitlm finetune --memory` holds from outside: a budget too small names the smallest that works in one line;
    /// that budget (weights streamed, a checkpoint every layer) runs under it, one MiB less is refused, and a larger
    /// budget with the weights resident runs under it too.
    /// </summary>
    [Fact]
    public void FinetuneStaysUnderItsBudget_AtTheSmallestItNames()
    {
        if (!PeakRssRunner.Supported) { output.WriteLine("skipped: no /proc"); return; }
        string dir = Path.Combine(Path.GetTempPath(), $"fitlm-ft-budget-{Guid.NewGuid():N}");
        string text = Path.Combine(Path.GetTempPath(), $"fitlm-ft-budget-{Guid.NewGuid():N}.txt");
        File.WriteAllText(text, string.Concat(Enumerable.Repeat("def add(a, b):\n    return a + b\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n", 40)));
        string[] Args(string memory, string output) => ["finetune", "-m", TestPaths.DemoModel, "-f", text, "--ctx", "32", "--steps", "3", "-t", "2", "--memory", memory, "-o", output];
        try
        {
            var small = CliRunner.Run(Args("40MiB", dir + "-small"));
            Assert.NotEqual(0, small.ExitCode);
            var line = Assert.Single(small.StdErr.Trim().Split('\n'), l => l.StartsWith("error:", StringComparison.Ordinal));
            var m = Regex.Match(line, @"^error: .*needs --memory (\d+)MiB$");
            Assert.True(m.Success, line);
            int smallest = int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);

            var r = PeakRssRunner.Run(Args($"{smallest}MiB", dir + "-streamed"));
            Assert.Contains("weights streamed", r.StdErr);
            AssertHeld(r, smallest * MiB, $"finetune at the smallest budget it names, {smallest} MiB");
            Assert.True(File.Exists(Path.Combine(dir + "-streamed", "adapter.gguf")));

            var less = CliRunner.Run(Args($"{smallest - 1}MiB", dir + "-less"));
            Assert.NotEqual(0, less.ExitCode);
            Assert.Single(less.StdErr.Trim().Split('\n'), l => l.StartsWith("error:", StringComparison.Ordinal));

            var resident = PeakRssRunner.Run(Args("140MiB", dir + "-resident"));
            Assert.Contains("weights resident", resident.StdErr);
            AssertHeld(resident, 140 * MiB, "finetune at 140 MiB");
        }
        finally
        {
            File.Delete(text);
            foreach (var d in new[] { "-small", "-streamed", "-less", "-resident" })
                if (Directory.Exists(dir + d)) Directory.Delete(dir + d, true);
        }
    }
}
