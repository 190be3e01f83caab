using System.Diagnostics;
using System.Globalization;
using FitLM.Tests.Training;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Cli;

/// <summary>`fitlm finetune --method mezo --mezo-full` as users run it: refusals, a trained model that loads, Ctrl-C and resume.</summary>
public sealed class FinetuneMezoFullCommandTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-mezo-full-cli-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private string TrainFile()
    {
        string path = Path.Combine(_dir, "train.txt");
        if (!File.Exists(path)) File.WriteAllText(path, FinetuneRunTests.TrainText());
        return path;
    }

    private string[] Full(string model, string outDir, params string[] more) =>
        ["finetune", "-m", model, "-f", TrainFile(), "--ctx", "32", "--batch", "2", "-t", "2", "--method", "mezo", "--mezo-full", "--lr", "1e-3", "-o", outDir, .. more];

    private static string[] StepLines(string stdout) => stdout.Split('\n').Where(l => l.StartsWith("step ", StringComparison.Ordinal)).ToArray();

    private void AssertOneErrorLine(CliRunner.Result r, string expected)
    {
        output.WriteLine($"exit {r.ExitCode}: {r.StdErr.Trim()}");
        Assert.NotEqual(0, r.ExitCode);
        var errors = r.StdErr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => l.StartsWith("error:", StringComparison.Ordinal)).ToList();
        Assert.Single(errors);
        Assert.Contains(expected, errors[0]);
        Assert.DoesNotContain("   at ", r.StdErr);
    }

    [Fact]
    public void RefusalsAreOneErrorLineAndWriteNothing()
    {
        string o = Path.Combine(_dir, "refused");
        var cases = new List<(string[] Args, string Expected)>
        {
            // The demo model is Q4_K_M: its weights cannot take MeZO's small steps.
            (Full(TestPaths.DemoModel, o), "--mezo-full trains weights stored as F32, F16 or BF16"),
            (Full(TestPaths.DemoModel, o).Where(a => a != "mezo" && a != "--method").ToArray(), "add --method mezo"),
            ([.. Full(TestPaths.DemoModel, o), "--rank", "4"], "--rank describes a LoRA adapter"),
        };
        if (TestPaths.Shared is { } shared)
        {
            cases.Add((Full(Path.Combine(shared, "models", "zoo", "tiny-llama3"), o), "convert the folder first"));
            cases.Add(([.. Full(FullMezoTests.TinyModel(_dir)!, o), "--adapter-init", Path.Combine(shared, "finetune")], "--adapter-init starts an adapter"));
            cases.Add(([.. Full(FullMezoTests.TinyModel(_dir)!, o), "--memory", "40MiB"], "is too small for --mezo-full"));
        }
        foreach (var (args, expected) in cases)
        {
            AssertOneErrorLine(CliRunner.Run(args), expected);
            Assert.False(File.Exists(Path.Combine(o, "model.gguf")));
        }
    }

    [Fact]
    public void TrainsAModelThatPerplexityLoads()
    {
        if (FullMezoTests.TinyModel(_dir) is not { } model) { output.WriteLine("skipped: ../shared is absent"); return; }
        string outDir = Path.Combine(_dir, "out");
        var r = CliRunner.Run(Full(model, outDir, "--steps", "3"));
        output.WriteLine(r.StdOut + r.StdErr);
        Assert.Equal(0, r.ExitCode);
        Assert.Equal(3, StepLines(r.StdOut).Length);
        Assert.Contains("MeZO on all weights", r.StdErr);
        Assert.Contains($"wrote the trained model {Path.Combine(outDir, "model.gguf")}", r.StdErr);
        Assert.False(File.Exists(Path.Combine(outDir, "adapter.gguf")));

        var baseline = CliRunner.Run("perplexity", "-m", model, "-f", TrainFile(), "-c", "32", "--chunks", "4", "-t", "2");
        var trained = CliRunner.Run("perplexity", "-m", Path.Combine(outDir, "model.gguf"), "-f", TrainFile(), "-c", "32", "--chunks", "4", "-t", "2");
        output.WriteLine(baseline.StdOut.Split('\n').Last(l => l.Length > 0) + " → " + trained.StdOut.Split('\n').Last(l => l.Length > 0));
        Assert.Equal(0, trained.ExitCode);
        Assert.Contains("Final estimate: PPL", trained.StdOut);
        Assert.NotEqual(baseline.StdOut.Trim(), trained.StdOut.Trim());
    }

    [Fact]
    public void CtrlCThenResumeEndsWithTheSameModelBytes()
    {
        if (FullMezoTests.TinyModel(_dir) is not { } model) { output.WriteLine("skipped: ../shared is absent"); return; }
        string straight = Path.Combine(_dir, "straight"), stopped = Path.Combine(_dir, "stopped");
        var a = CliRunner.Run(Full(model, straight, "--steps", "12"));
        Assert.Equal(0, a.ExitCode);

        var (exit, stdout, stderr) = CliRunner.RunAndInterrupt(Full(model, stopped, "--steps", "12"), afterLine: "step 1 ");
        output.WriteLine($"interrupted: exit {exit}\n{stdout}{stderr}");
        if (exit == 0) { output.WriteLine("inconclusive: the run finished before the interrupt arrived"); return; }
        Assert.Equal(130, exit);
        Assert.True(File.Exists(Path.Combine(stopped, "checkpoint", "model.gguf")));
        Assert.False(File.Exists(Path.Combine(stopped, "model.gguf")));

        var b = CliRunner.Run("finetune", "--resume", stopped, "-t", "2");
        output.WriteLine(b.StdOut + b.StdErr);
        Assert.Equal(0, b.ExitCode);
        var resumed = StepLines(b.StdOut);
        Assert.Equal(StepLines(a.StdOut).Skip(12 - resumed.Length), resumed);
        foreach (var file in new[] { "model.gguf", "train-log.jsonl" })
            Assert.True(File.ReadAllBytes(Path.Combine(straight, file)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(stopped, file))), $"{file} differs after resume");
    }
}
