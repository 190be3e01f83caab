using FitLM.Conversion;
using FitLM.Formats;
using FitLM.Memory;
using FitLM.Tensors;
using FitLM.Training;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Training;

/// <summary>
/// MeZO on every weight (--mezo-full) through the library: the perturbation returns F32 weights where they were,
/// steps lower the loss, the written model.gguf is the source with new weights, and a resumed run ends with the
/// same bytes as a straight one. On the zoo's tiny-llama3 converted to F32 (skipped without ../shared).
/// </summary>
public sealed class FullMezoTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-mezo-full-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    /// <summary>tiny-llama3 (hidden 64, 2 layers, llama3 RoPE factors as rope_freqs) as a GGUF of <paramref name="type"/>, or null without ../shared.</summary>
    internal static string? TinyModel(string dir, GgmlType type = GgmlType.F32)
    {
        if (TestPaths.Shared is not { } shared) return null;
        string path = Path.Combine(dir, $"tiny-llama3-{type.ToString().ToLowerInvariant()}.gguf");
        if (!File.Exists(path)) HfToGgufConverter.Convert(Path.Combine(shared, "models", "zoo", "tiny-llama3"), path, type);
        return path;
    }

    private static LanguageModel Load(string path) => LanguageModel.Load(path, new LoadOptions { ContextLength = 32, MaxBatch = 1 });

    private static TrainingBatch[] Batch(LanguageModel model, int sequences) =>
        [new TrainingBatch(TrainingData.FromText(model.Tokenizer, FinetuneRunTests.TrainText(), 32, "text").Windows.Take(sequences).ToArray())];

    private static float[][] Snapshot(MezoTrainer mezo) => mezo.ModelWeights!.Parameters.Select(p =>
    {
        var v = new float[p.Length];
        Dequantize.Row(p.Memory, p.Bytes(0, (int)p.Length), v);
        return v;
    }).ToArray();

    [Fact]
    public void PlusTwoMinusPlusEpsilonRestoresF32WeightsWithin1e6()
    {
        if (TinyModel(_dir) is not { } path) { output.WriteLine("skipped: ../shared is absent"); return; }
        using var model = Load(path);
        var mezo = MezoTrainer.Full(model.Source, model.Weights, 32, new MezoOptions { Epsilon = 1e-3f, Seed = 5 });
        // Every matrix and vector the graph reads (embedding, 7 projections and 2 norms per layer, final norm): all but rope_freqs.
        Assert.Equal(model.Source.Tensors.Count - 1, mezo.ModelWeights!.Parameters.Count);
        Assert.DoesNotContain(mezo.ModelWeights.Parameters, p => p.Name == "rope_freqs.weight");
        var before = Snapshot(mezo);
        mezo.Perturb(0, 0, 1e-3f);
        var plus = Snapshot(mezo);
        var z = mezo.Direction(0);
        for (int j = 0; j < before.Length; j++)
            for (int i = 0; i < before[j].Length; i += 97)
                Assert.True(Math.Abs(plus[j][i] - before[j][i] - 1e-3f * z[j][i]) < 1e-6f, $"{j}[{i}] moved by {plus[j][i] - before[j][i]}, not εz = {1e-3f * z[j][i]}");
        mezo.Perturb(0, 1e-3f, -1e-3f);
        mezo.Perturb(0, -1e-3f, 0);
        var after = Snapshot(mezo);
        double worst = 0;
        for (int j = 0; j < before.Length; j++)
            for (int i = 0; i < before[j].Length; i++)
                worst = Math.Max(worst, Math.Abs(after[j][i] - before[j][i]));
        output.WriteLine($"{mezo.ParameterCount} parameters; largest difference after +ε −2ε +ε: {worst:E2}");
        Assert.True(worst < 1e-6, $"the weights moved by up to {worst}");
    }

    [Fact]
    public void StepsLowerTheLossOnAFixedBatch()
    {
        if (TinyModel(_dir) is not { } path) { output.WriteLine("skipped: ../shared is absent"); return; }
        using var model = Load(path);
        var batch = Batch(model, 2);
        var mezo = MezoTrainer.Full(model.Source, model.Weights, batch[0].Count, new MezoOptions { LearningRate = 1e-3f, Seed = 1 });
        double Exact() => mezo.EvaluateLoss(batch[0]) / batch[0].TargetCount;
        double first = Exact();
        for (int s = 0; s < 20; s++) mezo.Step(batch);
        double last = Exact();
        output.WriteLine($"full MeZO on a fixed batch: loss {first:F5} → {last:F5} in 20 steps");
        Assert.True(last < first, $"full MeZO did not lower the loss: {first} → {last}");
    }

    [Fact]
    public void TheWrittenModelIsTheSourceWithTrainedWeights()
    {
        if (TinyModel(_dir) is not { } path) { output.WriteLine("skipped: ../shared is absent"); return; }
        using var model = Load(path);
        var data = new FinetuneData(TrainingData.FromText(model.Tokenizer, FinetuneRunTests.TrainText(), 32, "text"));
        var result = model.Finetune(data, Options(), Path.Combine(_dir, "out"));
        Assert.NotNull(result.ModelGguf);
        Assert.Null(result.AdapterGguf);
        Assert.False(File.Exists(Path.Combine(_dir, "out", "adapter.gguf")));

        using var a = GgufFile.Open(path);
        using var b = GgufFile.Open(result.ModelGguf);
        // Same metadata, tensor names, shapes, types and offsets: the headers are the same bytes.
        Assert.Equal(a.FileLength, b.FileLength);
        Assert.Equal(a.DataOffset, b.DataOffset);
        var ha = new byte[a.DataOffset];
        var hb = new byte[b.DataOffset];
        a.ReadExactly(0, ha);
        b.ReadExactly(0, hb);
        Assert.True(ha.AsSpan().SequenceEqual(hb), "the header (metadata and tensor table) differs from the source's");
        Assert.Equal(Bytes(a, "rope_freqs.weight"), Bytes(b, "rope_freqs.weight")); // not a parameter: copied
        foreach (var name in new[] { "token_embd.weight", "blk.1.ffn_down.weight", "output_norm.weight" })
            Assert.NotEqual(Bytes(a, name), Bytes(b, name));
    }

    private static byte[] Bytes(GgufFile f, string name)
    {
        var t = f.GetTensor(name);
        var bytes = new byte[t.ByteSize];
        f.ReadTensorBytes(t, 0, bytes);
        return bytes;
    }

    private static FinetuneOptions Options() => new()
    {
        Method = FinetuneMethod.Mezo, MezoFull = true, Context = 32, Batch = 2, Steps = 4, Seed = 3, LearningRate = 1e-3f, WarmupSteps = 1,
    };

    private sealed class CancelAfter(long step, CancellationTokenSource cts) : IProgress<FinetuneProgress>
    {
        public void Report(FinetuneProgress p)
        {
            if (p.Step == step) cts.Cancel();
        }
    }

    [Theory]
    [InlineData(GgmlType.F32)]
    [InlineData(GgmlType.F16)]
    [InlineData(GgmlType.BF16)]
    public void CancelledThenResumedRunWritesTheSameModelBytes(GgmlType type)
    {
        if (TinyModel(_dir, type) is not { } path) { output.WriteLine("skipped: ../shared is absent"); return; }
        string straight = Path.Combine(_dir, "straight"), stopped = Path.Combine(_dir, "stopped");
        FinetuneResult a;
        // Each run loads the model afresh: full MeZO trains the loaded weights in place.
        using (var model = Load(path))
            a = model.Finetune(new FinetuneData(TrainingData.FromText(model.Tokenizer, FinetuneRunTests.TrainText(), 32, "text")), Options(), straight);
        using (var model = Load(path))
        {
            using var cts = new CancellationTokenSource();
            var data = new FinetuneData(TrainingData.FromText(model.Tokenizer, FinetuneRunTests.TrainText(), 32, "text"));
            var b = model.Finetune(data, Options(), stopped, progress: new CancelAfter(2, cts), ct: cts.Token);
            Assert.True(b.Cancelled);
            Assert.True(File.Exists(Path.Combine(b.CheckpointDir, FullModelWeights.FileName)));
            Assert.False(File.Exists(Path.Combine(stopped, FullModelWeights.FileName)), "a cancelled run writes a checkpoint, not the model");
        }
        using (var model = Load(path))
        {
            var data = new FinetuneData(TrainingData.FromText(model.Tokenizer, FinetuneRunTests.TrainText(), 32, "text"));
            var c = model.ResumeFinetune(data, stopped);
            Assert.Equal(a.History.Select(e => e.Loss), c.History.Select(e => e.Loss));
        }
        foreach (var file in new[] { FullModelWeights.FileName, TrainingLog.FileName })
            Assert.True(File.ReadAllBytes(Path.Combine(straight, file)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(stopped, file))), $"{file} differs after resume");
        Assert.False(File.ReadAllBytes(path).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(straight, FullModelWeights.FileName))), "training changed nothing");
    }

    /// <summary>
    /// BF16 weights are perturbed in float and rounded back. Measured on pycoder-29m BF16: how many weights +ε −2ε +ε
    /// does not return exactly (the rounding error crossed half a unit in the last place), and how many an update
    /// leaves unchanged (it was below half a unit).
    /// </summary>
    [Fact]
    public void Bf16RoundingOnPycoder()
    {
        if (TestPaths.Shared is not { } shared) { output.WriteLine("skipped: ../shared is absent"); return; }
        string path = Path.Combine(_dir, "pycoder-bf16.gguf");
        HfToGgufConverter.Convert(Path.Combine(shared, "models", "pycoder-29m"), path, GgmlType.BF16);
        using var model = Load(path);
        var batch = Batch(model, 1);
        var mezo = MezoTrainer.Full(model.Source, model.Weights, batch[0].Count, new MezoOptions { LearningRate = 1e-4f, Seed = 2 });
        var before = Snapshot(mezo);
        mezo.Perturb(0, 0, 1e-3f);
        mezo.Perturb(0, 1e-3f, -1e-3f);
        mezo.Perturb(0, -1e-3f, 0);
        var after = Snapshot(mezo);
        long moved = 0, total = 0, small = 0;
        double worst = 0, sum = 0;
        for (int j = 0; j < before.Length; j++)
        {
            if (mezo.ModelWeights!.Parameters[j].Rounding != GgmlType.BF16) continue;
            total += before[j].Length;
            for (int i = 0; i < before[j].Length; i++)
            {
                if (before[j][i] == after[j][i]) continue;
                moved++;
                double d = Math.Abs(after[j][i] - before[j][i]);
                (worst, sum) = (Math.Max(worst, d), sum + d);
                if (Math.Abs(before[j][i]) < 4e-3) small++;
            }
        }
        double loss = mezo.Step(batch);
        output.WriteLine($"pycoder-29m BF16, ε = 1e-3: +ε −2ε +ε left {moved} of {total} BF16 weights off ({100.0 * moved / total:F2}%; " +
            $"{100.0 * small / Math.Max(1, moved):F0}% of them below 4e-3 in magnitude), by {sum / Math.Max(1, moved):E1} on average and {worst:E1} at most; " +
            $"an update at lr 1e-4 (projected gradient {mezo.LastProjectedGradient:F3}, loss {loss:F4}) left {100 * mezo.LastVanishedFraction:F2}% of them unchanged");
        Assert.True(moved < total / 10, $"{moved} of {total} weights did not return");
        Assert.True(worst < 1e-3, $"a weight drifted by {worst}, more than ε");
        Assert.InRange(mezo.LastVanishedFraction, 0.0, 1.0);
    }
}
