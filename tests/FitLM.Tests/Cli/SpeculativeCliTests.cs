using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Cli;

/// <summary>`fitlm run --lookup N` and `--draft MODEL` print what plain `fitlm run --temp 0` prints; bad combinations are one error line.</summary>
public sealed class SpeculativeCliTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-spec-cli-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private const string Prompt = "import os\n\ndef list_files(path):\n    for name in os.listdir(path):\n        print(name)\n\n# again, with name renamed to entry:\ndef list_files(path):\n";

    private CliRunner.Result Run(params string[] args)
    {
        var r = CliRunner.Run(args);
        output.WriteLine($"fitlm {string.Join(' ', args)} -> {r.ExitCode}\n{r.StdErr}");
        return r;
    }

    private CliRunner.Result Generate(params string[] extra) =>
        Run(["run", "-m", TestPaths.DemoModel, "-p", Prompt, "-n", "64", "--temp", "0", "-c", "256", .. extra]);

    [Fact]
    public void LookupAndDraftPrintThePlainText()
    {
        var plain = Generate();
        Assert.Equal(0, plain.ExitCode);
        var lookup = Generate("--lookup", "3");
        Assert.Equal(0, lookup.ExitCode);
        Assert.Equal(plain.StdOut, lookup.StdOut);
        Assert.Contains("speculative: lookup 3-gram, draft-max 11:", lookup.StdErr, StringComparison.Ordinal);
        Assert.Contains("tokens per pass", lookup.StdErr, StringComparison.Ordinal);
        // The model as its own draft (the demo file; q2_k from ../shared where present): every draft is right.
        string draft = TestPaths.Shared is { } shared ? Path.Combine(shared, "models", "pycoder-29m-gguf", "pycoder-29m-q2_k.gguf") : TestPaths.DemoModel;
        var withDraft = Generate("--draft", draft, "--draft-max", "4");
        Assert.Equal(0, withDraft.ExitCode);
        Assert.Equal(plain.StdOut, withDraft.StdOut);
        Assert.Contains("speculative: draft model", withDraft.StdErr, StringComparison.Ordinal);
    }

    [Fact]
    public void BadCombinationsAreOneErrorLine()
    {
        foreach (var (args, expected) in new (string[], string)[]
        {
            (["--lookup", "2", "--draft", TestPaths.DemoModel], "not both"),
            (["--lookup", "0"], "--lookup 0 is out of range"),
            (["--draft-max", "4"], "--draft-max applies with"),
            (["--lookup", "2", "--kv-evict", "h2o", "--kv-keep", "64"], "h2o"),
        })
        {
            var r = Generate(args);
            Assert.NotEqual(0, r.ExitCode);
            var lines = r.ErrorLines;
            Assert.Single(lines);
            Assert.StartsWith("error: ", lines[0], StringComparison.Ordinal);
            Assert.Contains(expected, lines[0], StringComparison.Ordinal);
        }
    }

    [Fact]
    public void ADraftWithAnotherTokenizerIsRefused()
    {
        if (TestPaths.Shared is not { } shared) { output.WriteLine("skipped: ../shared is absent"); return; }
        string copy = Generation.SpeculativeTests.OtherTokenizerCopy(shared, _dir);
        var r = Generate("--draft", copy);
        Assert.NotEqual(0, r.ExitCode);
        var lines = r.StdErr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.StartsWith("error: draft model other-vocab has another tokenizer", lines[^1], StringComparison.Ordinal);
    }
}
