using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Cli;

/// <summary>Every command, fed a model that is missing, a directory, an empty file or a text file, fails with one clear line.</summary>
public sealed class BadInputTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-cli-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private string[] BadModels()
    {
        string empty = Path.Combine(_dir, "empty.gguf");
        File.WriteAllBytes(empty, []);
        string text = Path.Combine(_dir, "notes.txt");
        File.WriteAllText(text, "this is not a model\nreally not\n");
        string folder = Path.Combine(_dir, "folder");
        Directory.CreateDirectory(folder);
        return [Path.Combine(_dir, "missing.gguf"), folder, empty, text];
    }

    public static TheoryData<string> Commands => new() { "run", "tokenize", "perplexity", "info", "convert" };

    private string[] ArgsFor(string command, string model)
    {
        string textFile = Path.Combine(_dir, "eval.txt");
        File.WriteAllText(textFile, string.Concat(Enumerable.Repeat("def f(x):\n    return x + 1\n", 200)));
        return command switch
        {
            "run" => ["run", "-m", model, "-p", "hello", "-n", "4"],
            "tokenize" => ["tokenize", "-m", model, "hello"],
            "perplexity" => ["perplexity", "-m", model, "-f", textFile, "-c", "64", "--chunks", "1"],
            "info" => ["info", "-m", model],
            "convert" => ["convert", "-m", model, "-o", Path.Combine(_dir, "out.gguf")],
            _ => throw new ArgumentException(command),
        };
    }

    [Theory]
    [MemberData(nameof(Commands))]
    public void BadModelGivesOneLineError(string command)
    {
        foreach (var model in BadModels())
        {
            var r = CliRunner.Run(ArgsFor(command, model));
            output.WriteLine($"{command} {Path.GetFileName(model)} → exit {r.ExitCode}: {r.StdErr.Trim()}");
            Assert.NotEqual(0, r.ExitCode);
            Assert.DoesNotContain("Unhandled", r.StdErr);
            var lines = r.StdErr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Single(lines);
            Assert.StartsWith("error: ", lines[0]);
            Assert.DoesNotContain("internal error", lines[0]);
        }
        Assert.False(File.Exists(Path.Combine(_dir, "out.gguf")), "a failed convert must not leave an output file");
    }

    [Fact]
    public void BadFlagValuesGiveOneLineError()
    {
        string model = TestPaths.DemoModel;
        foreach (var args in new[]
        {
            new[] { "run", "-m", model, "-p", "x", "--temp", "-1" },
            new[] { "run", "-m", model, "-p", "x", "--top-p", "0" },
            new[] { "run", "-m", model, "-p", "x", "-t", "0" },
            new[] { "run", "-m", model },
            new[] { "perplexity", "-m", model, "-f", Path.Combine(_dir, "nope.txt") },
        })
        {
            var r = CliRunner.Run(args);
            output.WriteLine($"{string.Join(' ', args.Skip(3))} → exit {r.ExitCode}: {r.StdErr.Trim()}");
            Assert.NotEqual(0, r.ExitCode);
            Assert.StartsWith("error: ", r.StdErr.Trim());
        }
    }
}
