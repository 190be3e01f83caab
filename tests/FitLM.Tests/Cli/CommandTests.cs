using System.Text.Json;
using Xunit;

namespace FitLM.Tests.Cli;

/// <summary>The commands on the demo model, as a user runs them.</summary>
public class CommandTests
{
    [Fact]
    public void TokenizePrintsIdsWithAndWithoutBos()
    {
        var withBos = CliRunner.Run("tokenize", "-m", TestPaths.DemoModel, "def f(x):");
        Assert.Equal(0, withBos.ExitCode);
        var ids = withBos.StdOut.Trim().Split(' ').Select(int.Parse).ToArray();
        Assert.Equal(0, ids[0]); // BOS of the demo model
        var noBos = CliRunner.Run("tokenize", "-m", TestPaths.DemoModel, "--no-bos", "def f(x):");
        Assert.Equal(ids[1..], noBos.StdOut.Trim().Split(' ').Select(int.Parse).ToArray());
    }

    [Fact]
    public void TokenizeJsonReadsArrayFromStdin()
    {
        var r = CliRunner.RunWithInput("[\"def f(x):\", \"\", \"  return 1\"]", "tokenize", "-m", TestPaths.DemoModel, "--no-bos", "--json");
        Assert.Equal(0, r.ExitCode);
        var arrays = JsonSerializer.Deserialize<int[][]>(r.StdOut)!;
        Assert.Equal(3, arrays.Length);
        Assert.Empty(arrays[1]);
        var single = CliRunner.Run("tokenize", "-m", TestPaths.DemoModel, "--no-bos", "def f(x):");
        Assert.Equal(single.StdOut.Trim(), string.Join(' ', arrays[0]));
    }

    [Fact]
    public void RunGreedyIdsAreDeterministicAndMatchText()
    {
        string[] args = ["run", "-m", TestPaths.DemoModel, "-p", "import numpy as np\n", "-n", "12", "--temp", "0"];
        var a = CliRunner.Run([.. args, "--ids"]);
        var b = CliRunner.Run([.. args, "--ids"]);
        Assert.Equal(0, a.ExitCode);
        Assert.Equal(a.StdOut, b.StdOut);
        var ids = a.StdOut.Trim().Split(' ').Select(int.Parse).ToArray();
        Assert.InRange(ids.Length, 1, 12);
        var text = CliRunner.Run(args);
        Assert.Equal(0, text.ExitCode);
        Assert.StartsWith("import numpy as np\n", text.StdOut);
        Assert.Contains("peak RSS", text.StdErr);
    }

    [Fact]
    public void InfoDescribesTheDemoModel()
    {
        var r = CliRunner.Run("info", "-m", TestPaths.DemoModel);
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("architecture:   llama", r.StdOut);
        Assert.Contains("Q4_K", r.StdOut);
        Assert.Contains("Q6_K", r.StdOut);
        Assert.Contains("KV cache", r.StdOut);
    }
}
