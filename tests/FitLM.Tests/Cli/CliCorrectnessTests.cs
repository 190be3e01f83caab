using System.Text;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Cli;

/// <summary>Flags that were ignored, misread or answered in .NET's words (issue 12, item 7), each as a user hits it.</summary>
public sealed class CliCorrectnessTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-cli-correct-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private static string Demo => TestPaths.DemoModel;

    private string TextFile(string text)
    {
        string path = Path.Combine(_dir, $"text-{Guid.NewGuid():N}.txt");
        File.WriteAllText(path, text);
        return path;
    }

    private static string EvalText => string.Concat(Enumerable.Repeat("def f(x):\n    return x + 1\n\n", 60));

    private CliRunner.Result Run(params string[] args) => RunWithInput(null, args);

    private CliRunner.Result RunWithInput(string? stdin, params string[] args)
    {
        var r = CliRunner.RunWithInput(stdin, args);
        output.WriteLine($"fitlm {string.Join(' ', args)} -> {r.ExitCode}\n{r.StdErr}");
        return r;
    }

    private static void AssertOneLineError(CliRunner.Result r, string expected)
    {
        Assert.NotEqual(0, r.ExitCode);
        var lines = r.ErrorLines;
        Assert.Single(lines);
        Assert.StartsWith("error: ", lines[0]);
        Assert.Contains(expected, lines[0]);
    }

    [Theory]
    [InlineData("0")]
    [InlineData("-2")]
    public void PerplexityChunksBelowOneIsAnError(string chunks)
    {
        var r = Run("perplexity", "-m", Demo, "-f", TextFile(EvalText), "-c", "64", "--chunks", chunks);
        AssertOneLineError(r, "--chunks must be >= 1");
        Assert.DoesNotContain("Final estimate", r.StdOut);
    }

    [Fact]
    public void PerplexityReadsStandardInput()
    {
        var fromFile = Run("perplexity", "-m", Demo, "-f", TextFile(EvalText), "-c", "64", "--chunks", "2");
        var fromStdin = RunWithInput(EvalText, "perplexity", "-m", Demo, "-f", "-", "-c", "64", "--chunks", "2");
        Assert.Equal(0, fromStdin.ExitCode);
        Assert.StartsWith("Final estimate: PPL = ", fromStdin.StdOut);
        Assert.Equal(fromFile.StdOut, fromStdin.StdOut);
    }

    [Fact]
    public void RunReadsThePromptFromStandardInput()
    {
        var r = RunWithInput("def fibonacci(n):", "run", "-m", Demo, "-f", "-", "-n", "4", "--temp", "0");
        Assert.Equal(0, r.ExitCode);
        var p = Run("run", "-m", Demo, "-p", "def fibonacci(n):", "-n", "4", "--temp", "0");
        Assert.StartsWith("def fibonacci(n):", r.StdOut);
        Assert.Equal(p.StdOut, r.StdOut);
    }

    [Fact]
    public void RunWithAPromptLongerThanTheContextFailsBeforeEchoingIt()
    {
        string prompt = TextFile(string.Concat(Enumerable.Repeat("def f(x): return x\n", 40)));
        var r = Run("run", "-m", Demo, "-f", prompt, "-c", "32", "-n", "4");
        AssertOneLineError(r, "the context holds 32");
        Assert.Equal("", r.StdOut);
    }

    [Fact]
    public void RunRefusesBothPromptAndFile()
    {
        var r = Run("run", "-m", Demo, "-p", "def f(x):", "-f", TextFile("import os\n"), "-n", "4");
        AssertOneLineError(r, "give the prompt with -p TEXT or -f FILE, not both");
        Assert.Equal("", r.StdOut);
    }

    [Theory]
    [InlineData("run", "--weights")]
    [InlineData("run", "--stack-cache")]
    [InlineData("perplexity", "--weights")]
    [InlineData("bench", "--weights")]
    [InlineData("plan", "--weights")]
    [InlineData("serve", "--weights")]
    public void StackFlagsOnAModelThatIsNotStackedAreAnError(string command, string flag)
    {
        string value = flag == "--weights" ? "10MiB" : "q8_0";
        string[] args = command switch
        {
            "run" => ["run", "-m", Demo, "-p", "def f(x):", "-n", "2", flag, value],
            "perplexity" => ["perplexity", "-m", Demo, "-f", TextFile(EvalText), "-c", "64", flag, value],
            "bench" => ["bench", "-m", Demo, "-p", "8", "-n", "2", "-r", "1", "--no-bandwidth", flag, value],
            "plan" => ["plan", "-m", Demo, "--no-probe", flag, value],
            _ => ["serve", "-m", Demo, "--port", "0", flag, value],
        };
        AssertOneLineError(Run(args), $"{flag} applies to stacked (BitStack) models only");
    }

    [Theory]
    [InlineData("--temp", "abc", "--temp: 'abc' is not a number")]
    [InlineData("-n", "abc", "--n-predict: 'abc' is not a whole number")]
    [InlineData("-n", "99999999999", "--n-predict: '99999999999' is not a whole number from -2147483648 to 2147483647")]
    [InlineData("--top-p", "0,5x", "--top-p: '0,5x' is not a number")]
    public void ParseErrorsSpeakTheUsersLanguage(string flag, string value, string expected)
    {
        var r = Run("run", "-m", Demo, "-p", "x", flag, value);
        Assert.Equal(2, r.ExitCode);
        Assert.StartsWith($"error: {expected} (see 'fitlm run --help')", r.StdErr);
        Assert.DoesNotContain("System.", r.StdErr);
    }

    [Fact]
    public void ACorruptTensorNameIsCappedAndEscaped()
    {
        // A GGUF header whose one tensor has a 2000-byte binary name and zero dimensions (an error that quotes the name).
        string path = Path.Combine(_dir, "corrupt.gguf");
        using (var w = new BinaryWriter(File.Create(path)))
        {
            w.Write(0x46554747u); w.Write(3u); w.Write(1UL); w.Write(0UL);
            var name = new byte[2000];
            for (int i = 0; i < name.Length; i++) name[i] = (byte)(i % 32); // control bytes
            w.Write((ulong)name.Length); w.Write(name);
            w.Write(0u);
            w.Write(new byte[64]);
        }
        var r = Run("info", "-m", path);
        AssertOneLineError(r, "has 0 dimensions");
        output.WriteLine($"{r.StdErr.Length} characters");
        Assert.True(r.StdErr.Length < 300 + path.Length, $"the error is {r.StdErr.Length} characters long");
        Assert.Contains("'\\x00\\x01\\x02", r.StdErr);
        Assert.Contains("... (2000 characters)", r.StdErr);
    }

    [Fact]
    public void RunningPastTheTrainedContextWarnsOnce()
    {
        var r = Run("run", "-m", Demo, "-p", "def f(x):", "-n", "2", "--temp", "0", "-c", "4096");
        Assert.Equal(0, r.ExitCode);
        var warnings = r.StdErr.Split('\n').Where(l => l.StartsWith("warning:")).ToList();
        Assert.Single(warnings);
        Assert.Contains("context 4096 is longer than the 2048 positions the model was trained on", warnings[0]);
        var within = Run("run", "-m", Demo, "-p", "def f(x):", "-n", "2", "--temp", "0", "-c", "2048");
        Assert.DoesNotContain("warning:", within.StdErr);
    }

    [Fact]
    public void RunPrintsLlamaCppStatisticsAndOnePeak()
    {
        foreach (var extra in new[] { Array.Empty<string>(), ["--memory", "1GiB"] })
        {
            var r = Run(["run", "-m", Demo, "-p", "def f(x):", "-n", "4", "--temp", "0", .. extra]);
            Assert.Equal(0, r.ExitCode);
            Assert.Matches(@"(?m)^ +load time = +[\d.]+ ms$", r.StdErr);
            Assert.Matches(@"(?m)^prompt eval time = +[\d.]+ ms / +\d+ tokens \( +[\d.]+ ms per token, +[\d.]+ tokens per second\)$", r.StdErr);
            Assert.Matches(@"(?m)^ +eval time = +[\d.]+ ms / +3 runs +\( +[\d.]+ ms per token, +[\d.]+ tokens per second\)$", r.StdErr);
            Assert.Matches(@"(?m)^ +total time = +[\d.]+ ms / +\d+ tokens$", r.StdErr);
            Assert.Contains("stopped: token limit", r.StdErr);
            Assert.Single(r.StdErr.Split('\n'), l => l.Contains("peak RSS"));
        }
    }

    [Fact]
    public void StopReasonsPrintInWords()
    {
        var stop = Run("run", "-m", Demo, "-p", "def f(x):\n", "-n", "32", "--temp", "0", "--stop", "return");
        Assert.Contains("stopped: stop string", stop.StdErr);
        var full = Run("run", "-m", Demo, "-p", "def f(x):\n", "-n", "-1", "--temp", "0", "-c", "24");
        Assert.Matches("stopped: (context full|end of generation)", full.StdErr);
        Assert.DoesNotContain("contextfull", full.StdErr + stop.StdErr);
        Assert.DoesNotContain("stopstring", full.StdErr + stop.StdErr);
    }

    public static TheoryData<string> LoadingCommands => new() { "run", "perplexity", "bench", "serve", "plan" };

    /// <summary>The one option group that loads a model: every loading command takes every flag.</summary>
    [Theory]
    [MemberData(nameof(LoadingCommands))]
    public void EveryLoadingCommandAcceptsTheWholeLoadGroup(string command)
    {
        var r = Run(command, "--help");
        Assert.Equal(0, r.ExitCode);
        string[] flags =
        [
            "--model", "--ctx-size", "--threads", "--memory", "--runtime-memory", "--stream", "--ffn-fraction", "--ffn-window",
            "--predictor", "--random-neurons", "--ffn-recall", "--weights", "--stack-cache", "--kv", "--kv-evict", "--kv-keep", "--kv-sinks",
        ];
        foreach (var flag in flags)
            Assert.Matches($@"(?m)^\s+(-\S+, )*{flag}\b", r.StdOut);
    }

    [Fact]
    public void PlanAcceptsKvFlags()
    {
        var r = Run("plan", "-m", Demo, "--no-probe", "--kv", "f16", "-c", "512");
        Assert.Equal(0, r.ExitCode);
        var bad = Run("plan", "-m", Demo, "--no-probe", "--kv", "nonsense");
        AssertOneLineError(bad, "nonsense");
    }
}
