using Xunit;
using FitLM.Adapters;
using FitLM.Memory;
using FitLM.Training;

namespace FitLM.Tests.Training;

/// <summary>The fine-tuning loop through the library API: cancel leaves a loadable checkpoint, resume continues bit for bit.</summary>
public sealed class FinetuneRunTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-finetune-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    /// <summary>Python-like text of about 1500 tokens: enough windows of 32 for a few steps of 2.</summary>
    public static string TrainText() => string.Concat(Enumerable.Range(0, 60).Select(i =>
        $"def add_{i}(x, y):\n    \"\"\"Return x plus {i} times y.\"\"\"\n    return x + {i} * y\n\n"));

    private static LanguageModel Demo() => LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = 32, MaxBatch = 1 });

    private static FinetuneOptions Options(FinetuneMethod method) => new()
    {
        Method = method, Context = 32, Batch = 2, Steps = 4, Seed = 3, Rank = 4, Alpha = 8, CheckpointLayers = 2,
        LearningRate = method == FinetuneMethod.Mezo ? 1e-3f : 1e-2f, Cosine = true, WarmupSteps = 1,
    };

    /// <summary>Reports on the training thread (System.Progress would post to the thread pool) and cancels after a step.</summary>
    private sealed class CancelAfter(long step, CancellationTokenSource cts) : IProgress<FinetuneProgress>
    {
        public void Report(FinetuneProgress p)
        {
            if (p.Step == step) cts.Cancel();
        }
    }

    [Theory]
    [InlineData(FinetuneMethod.Lora)]
    [InlineData(FinetuneMethod.Mezo)]
    public void CancelledThenResumedRunWritesTheSameBytesAsAStraightRun(FinetuneMethod method)
    {
        using var model = Demo();
        var data = new FinetuneData(TrainingData.FromText(model.Tokenizer, TrainText(), 32, "text"));
        string straight = Path.Combine(_dir, "straight"), stopped = Path.Combine(_dir, "stopped");
        var a = model.Finetune(data, Options(method), straight);
        Assert.False(a.Cancelled);
        Assert.Equal(4, a.History.Count);

        using var cts = new CancellationTokenSource();
        var b = model.Finetune(data, Options(method), stopped, progress: new CancelAfter(2, cts), ct: cts.Token);
        Assert.True(b.Cancelled);
        Assert.Equal(2, b.StepsDone);
        Assert.False(File.Exists(Path.Combine(stopped, FinetuneRun.AdapterGgufFile)), "a cancelled run writes a checkpoint, not the final adapter");
        // The checkpoint is a usable adapter by itself.
        var saved = LoraFile.Load(b.CheckpointDir, model.Source);
        Assert.Equal(4, saved.Rank);

        var c = model.ResumeFinetune(data, stopped);
        Assert.False(c.Cancelled);
        Assert.Equal(a.History.Select(e => e.Loss), c.History.Select(e => e.Loss));
        foreach (var file in new[] { PeftAdapterFolder.WeightsFile, FinetuneRun.AdapterGgufFile, TrainingLog.FileName })
            Assert.True(File.ReadAllBytes(Path.Combine(straight, file)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(stopped, file))), $"{file} differs after resume");
    }

    [Fact]
    public void ResumeRefusesOtherDataAndAFinishedRun()
    {
        using var model = Demo();
        var data = new FinetuneData(TrainingData.FromText(model.Tokenizer, TrainText(), 32, "text"));
        string dir = Path.Combine(_dir, "run");
        using var cts = new CancellationTokenSource();
        model.Finetune(data, Options(FinetuneMethod.Lora) with { Steps = 2 }, dir, progress: new CancelAfter(1, cts), ct: cts.Token);
        var other = new FinetuneData(TrainingData.FromText(model.Tokenizer, TrainText() + TrainText(), 32, "text"));
        Assert.Contains("training data differ", Assert.Throws<FitLMException>(() => model.ResumeFinetune(other, dir)).Message);
        Assert.Contains("holds the checkpoint of an earlier run", Assert.Throws<FitLMException>(() => model.Finetune(data, Options(FinetuneMethod.Lora), dir)).Message);
        model.ResumeFinetune(data, dir);
        Assert.Contains("nothing to resume", Assert.Throws<FitLMException>(() => model.ResumeFinetune(data, dir)).Message);
    }
}
