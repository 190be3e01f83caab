using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Xunit;
using Xunit.Abstractions;
using FitLM.Tests.Training;

namespace FitLM.Tests.Cli;

/// <summary>`fitlm finetune` as users run it: PyTorch parity line by line, Ctrl-C and resume, outputs others load, bad input.</summary>
public sealed class FinetuneCommandTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-finetune-cli-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private string TrainFile()
    {
        string path = Path.Combine(_dir, "train.txt");
        if (!File.Exists(path)) File.WriteAllText(path, FinetuneRunTests.TrainText());
        return path;
    }

    private string[] Demo(string outDir, params string[] more) =>
        ["finetune", "-m", TestPaths.DemoModel, "-f", TrainFile(), "--ctx", "32", "--batch", "2", "-t", "2", "-o", outDir, .. more];

    private static double[] StepLosses(string stdout) => stdout.Split('\n')
        .Where(l => l.StartsWith("step ", StringComparison.Ordinal))
        .Select(l => double.Parse(l.Split(' ')[3], CultureInfo.InvariantCulture)).ToArray();

    private void AssertOneErrorLine(CliRunner.Result r, string expected)
    {
        output.WriteLine($"exit {r.ExitCode}: {r.StdErr.Trim()}");
        Assert.NotEqual(0, r.ExitCode);
        var errors = r.StdErr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => l.StartsWith("error:", StringComparison.Ordinal)).ToList();
        Assert.Single(errors);
        Assert.Contains(expected, errors[0]);
        Assert.DoesNotContain("internal error", r.StdErr);
        Assert.DoesNotContain("   at ", r.StdErr);
    }

    [Fact]
    public void StepLinesMatchPyTorchsAdamWLosses()
    {
        if (TorchReference.Load() is not { } reference) { output.WriteLine("skipped: ../shared/finetune is absent"); return; }
        string shared = Path.Combine(TestPaths.Shared!, "finetune");
        var r = CliRunner.Run("finetune", "-m", reference.ModelFolder, "--train-ids", Path.Combine(shared, "lora-batch.json"),
            "--adapter-init", shared, "--lr", "1e-3", "--lr-schedule", "constant", "--clip", "0", "--steps", "3", "-t", "2", "-o", Path.Combine(_dir, "parity"));
        output.WriteLine(r.StdOut + r.StdErr);
        Assert.Equal(0, r.ExitCode);
        var losses = StepLosses(r.StdOut);
        var expected = reference.Json.GetProperty("adamw").GetProperty("loss_before_each_step").EnumerateArray().Select(e => e.GetDouble()).Take(3).ToArray();
        Assert.Equal(3, losses.Length);
        for (int i = 0; i < 3; i++)
            Assert.True(Math.Abs(losses[i] - expected[i]) / expected[i] < 1e-3, $"step {i + 1}: loss {losses[i]} vs PyTorch {expected[i]}");
    }

    [Fact]
    public void CtrlCWritesACheckpointAndResumeEndsWithTheSameAdapterBytes()
    {
        string straight = Path.Combine(_dir, "straight"), stopped = Path.Combine(_dir, "stopped");
        var a = CliRunner.Run(Demo(straight, "--steps", "8"));
        Assert.Equal(0, a.ExitCode);

        // Ctrl-C (SIGINT) once the first step is printed.
        var (exit, stdout, stderr) = CliRunner.RunAndInterrupt(Demo(stopped, "--steps", "8"), afterLine: "step 1 ");
        output.WriteLine($"interrupted: exit {exit}\n{stdout}{stderr}");
        if (exit == 0) { output.WriteLine("inconclusive: the run finished before the interrupt arrived"); return; }
        Assert.Equal(130, exit);
        Assert.Contains($"resume with: fitlm finetune --resume {stopped}", stderr);
        Assert.False(File.Exists(Path.Combine(stopped, "adapter.gguf")));
        Assert.True(File.Exists(Path.Combine(stopped, "checkpoint", "state.json")));

        // The model and the data come from the checkpoint.
        var b = CliRunner.Run("finetune", "--resume", stopped, "-t", "2");
        output.WriteLine(b.StdOut + b.StdErr);
        Assert.Equal(0, b.ExitCode);
        Assert.Equal(StepLosses(a.StdOut).Skip(8 - StepLosses(b.StdOut).Length), StepLosses(b.StdOut));
        foreach (var file in new[] { "adapter_model.safetensors", "adapter.gguf", "train-log.jsonl" })
            Assert.True(File.ReadAllBytes(Path.Combine(straight, file)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(stopped, file))), $"{file} differs after resume");
    }

    [Fact]
    public void EvalLogPlotAndAnAdapterThatPerplexityLoads()
    {
        string outDir = Path.Combine(_dir, "out"), plot = Path.Combine(_dir, "loss.svg");
        var r = CliRunner.Run(Demo(outDir, "--steps", "4", "--eval", TrainFile(), "--eval-every", "2", "--eval-windows", "4", "--plot", plot));
        output.WriteLine(r.StdOut + r.StdErr);
        Assert.Equal(0, r.ExitCode);
        Assert.Equal(4, StepLosses(r.StdOut).Length);
        Assert.Equal(2, r.StdOut.Split('\n').Count(l => l.StartsWith("eval ", StringComparison.Ordinal)));
        var log = File.ReadAllLines(Path.Combine(outDir, "train-log.jsonl"));
        Assert.Equal(4, log.Length);
        Assert.True(JsonDocument.Parse(log[3]).RootElement.GetProperty("eval_ppl").GetDouble() > 1);
        Assert.Contains("eval loss", File.ReadAllText(plot));
        Assert.True(File.Exists(Path.Combine(outDir, "adapter_config.json")));

        var text = Path.Combine(_dir, "eval.txt");
        File.WriteAllText(text, FinetuneRunTests.TrainText());
        var baseline = CliRunner.Run("perplexity", "-m", TestPaths.DemoModel, "-f", text, "-c", "32", "--chunks", "4", "-t", "2");
        var adapted = CliRunner.Run("perplexity", "-m", TestPaths.DemoModel, "--lora", Path.Combine(outDir, "adapter.gguf"), "-f", text, "-c", "32", "--chunks", "4", "-t", "2");
        output.WriteLine(baseline.StdOut + adapted.StdOut + adapted.StdErr);
        Assert.Equal(0, adapted.ExitCode);
        Assert.Contains("Final estimate: PPL", adapted.StdOut);
        Assert.NotEqual(baseline.StdOut.Trim(), adapted.StdOut.Trim()); // the trained adapter changes the model
    }

    [Fact]
    public void MezoTrainsAndWritesAnAdapter()
    {
        string outDir = Path.Combine(_dir, "mezo");
        var r = CliRunner.Run(Demo(outDir, "--steps", "2", "--method", "mezo"));
        output.WriteLine(r.StdOut + r.StdErr);
        Assert.Equal(0, r.ExitCode);
        Assert.Equal(2, StepLosses(r.StdOut).Length);
        Assert.True(File.Exists(Path.Combine(outDir, "adapter.gguf")));
    }

    [Fact]
    public void BadInputGivesOneErrorLineAndWritesNoAdapter()
    {
        string empty = Path.Combine(_dir, "empty.txt"), shortText = Path.Combine(_dir, "short.txt");
        File.WriteAllText(empty, "");
        File.WriteAllText(shortText, "def f(): pass\n");
        string badIds = Path.Combine(_dir, "ids.json"), outOfVocab = Path.Combine(_dir, "vocab.json");
        File.WriteAllText(badIds, "[[1, 2, 3]");
        File.WriteAllText(outOfVocab, "[[1, 2, 99999]]");
        string corrupt = Path.Combine(_dir, "corrupt");
        Directory.CreateDirectory(corrupt);
        File.WriteAllText(Path.Combine(corrupt, "adapter_config.json"), "{\"peft_type\": \"LORA\", \"r\": 8, \"lora_alpha\": 16}");
        File.WriteAllBytes(Path.Combine(corrupt, "adapter_model.safetensors"), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        string o = Path.Combine(_dir, "bad-out");
        var cases = new (string[] Args, string Expected)[]
        {
            (["finetune", "-m", TestPaths.DemoModel, "-f", empty, "-o", o], "is empty"),
            (["finetune", "-m", TestPaths.DemoModel, "-f", shortText, "--ctx", "32", "-o", o], "needs at least 32"),
            ([.. Demo(o), "--rank", "0"], "--rank 0 must be at least 1"),
            ([.. Demo(o), "--lr", "0"], "--lr 0 must be a positive number"),
            ([.. Demo(o), "--lr=-0.001"], "must be a positive number"),
            ([.. Demo(o), "--adapter-init", corrupt], corrupt),
            (["finetune", "-m", TestPaths.DemoModel, "--train-ids", badIds, "-o", o], "not valid JSON"),
            (["finetune", "-m", TestPaths.DemoModel, "--train-ids", outOfVocab, "-o", o], "outside the model's vocabulary"),
            ([.. Demo(TestPaths.DemoModel)], "would replace the input"),
            ([.. Demo(o), "--checkpoint", "many"], "--checkpoint 'many'"),
            ([.. Demo(o), "--memory", "20MiB"], "is too small to fine-tune"),
            ([.. Demo(o), "--steps", "2", "--epochs", "1"], "not both"),
        };
        foreach (var (args, expected) in cases)
        {
            var r = CliRunner.Run(args);
            AssertOneErrorLine(r, expected);
            Assert.False(File.Exists(Path.Combine(o, "adapter.gguf")));
        }
        if (TestPaths.Shared is { } shared)
        {
            // The PyTorch reference's adapter (pycoder-29m, hidden 512) on a model of hidden 64.
            var r = CliRunner.Run(["finetune", "-m", Path.Combine(shared, "models", "zoo", "tiny-llama3"), "-f", TrainFile(), "--ctx", "32", "-o", o,
                "--adapter-init", Path.Combine(shared, "finetune")]);
            AssertOneErrorLine(r, "another model");
        }
    }

    [Fact]
    public void NanLossStopsAndKeepsTheLastGoodCheckpoint()
    {
        string outDir = Path.Combine(_dir, "nan");
        var r = CliRunner.Run(Demo(outDir, "--steps", "6", "--save-every", "1", "--lr", "1e30", "--clip", "0"));
        output.WriteLine(r.StdOut + r.StdErr);
        AssertOneErrorLine(r, "loss became");
        Assert.Matches(@"loss became (NaN|infinite) at step (\d+); the last good checkpoint \(step \d+\) is in ", r.StdErr);
        Assert.False(File.Exists(Path.Combine(outDir, "adapter.gguf")));
        var state = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "checkpoint", "state.json"))).RootElement;
        long failedAt = long.Parse(System.Text.RegularExpressions.Regex.Match(r.StdErr, @"at step (\d+)").Groups[1].Value, CultureInfo.InvariantCulture);
        Assert.Equal(failedAt - 1, state.GetProperty("step").GetInt64());
        Assert.True(File.Exists(Path.Combine(outDir, "checkpoint", "adapter_model.safetensors")));

        // A new run into the same folder is refused and leaves that checkpoint as it was; so is a resume with other options.
        byte[] before = File.ReadAllBytes(Path.Combine(outDir, "checkpoint", "state.json"));
        AssertOneErrorLine(CliRunner.Run(Demo(outDir, "--steps", "2")), "--resume");
        AssertOneErrorLine(CliRunner.Run("finetune", "--resume", outDir, "--lr", "0.5"), "--lr 0.5 differs from the checkpoint's");
        Assert.Equal(before, File.ReadAllBytes(Path.Combine(outDir, "checkpoint", "state.json")));
    }
}
