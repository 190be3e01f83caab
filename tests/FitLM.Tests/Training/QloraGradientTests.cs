using Xunit;
using FitLM.Adapters;
using FitLM.Runtime;
using FitLM.Training;

namespace FitLM.Tests.Training;

/// <summary>
/// QLoRA: LoRA gradients through base weights kept in their quantized GGUF type (Q8_0; Q4_K with Q6_K) on
/// pycoder-29m, with the reference adapter read through the PEFT reader (which permutes the q/k rows of B for the
/// GGUF's interleaved RoPE), against PyTorch's F32 reference; and the graph never expands the base weights.
/// Runs alone: the memory test reads process-wide allocation counters.
/// </summary>
[Collection(SequentialCollection.Name)]
public class QloraGradientTests
{
    [Theory]
    // Measured here: Q8_0 loss 3.4e-4 and per-tensor gradient norms at most 7.3e-3 (median 1.2e-3) relative off
    // F32; Q4_K_M loss 8.8e-3, gradient norms at most 7.3e-2 (median 1.5e-2). The bounds leave 3-6x of room.
    [InlineData("pycoder-29m-q8_0.gguf", 2e-3, 3e-2)]
    [InlineData("pycoder-29m-q4_k_m.gguf", 3e-2, 0.2)]
    public void GradientsAreCloseToTheF32Reference(string file, double lossTolerance, double normTolerance)
    {
        if (TorchReference.Load() is not { } r) { Console.WriteLine("skipped: ../shared/finetune is absent"); return; }
        using var model = LanguageModel.Load(Path.Combine(TestPaths.Shared!, "models", "pycoder-29m-gguf", file), 128);
        Assert.True(QkRowOrder.IsPermuted(model.Source), "a llama GGUF keeps q/k rows in the converter's interleaved order");
        var adapter = PeftAdapterFolder.Read(Path.Combine(TestPaths.Shared!, "finetune"), model.Source);
        var trainer = new LoraTrainer(model.Config, model.Weights, adapter, r.Batch.Sum(s => s.Length), 0, new OptimizerOptions { Clip = 0, Cosine = false });
        double loss = trainer.ComputeGradients([new TrainingBatch(r.Batch)]);

        var l2 = r.Json.GetProperty("grad_l2");
        double worst = 0, sumSq = 0, refSumSq = 0;
        string worstName = "";
        var errors = new List<double>();
        foreach (var t in trainer.Graph.Trainable)
            foreach (var (ab, grad) in new[] { ('A', t.GradA), ('B', t.GradB) })
            {
                string name = TorchReference.PeftName(t.Pair.Name, ab);
                double expected = l2.GetProperty(name).GetDouble();
                double sq = grad.Sum(g => (double)g * g);
                double rel = Math.Abs(Math.Sqrt(sq) - expected) / expected;
                errors.Add(rel);
                sumSq += sq;
                refSumSq += expected * expected;
                if (rel > worst) { worst = rel; worstName = name; }
            }
        errors.Sort();
        double lossRel = Math.Abs(loss - r.Loss) / r.Loss, globalRel = Math.Abs(Math.Sqrt(sumSq) - Math.Sqrt(refSumSq)) / Math.Sqrt(refSumSq);
        Console.WriteLine($"{file}: loss {loss:F6} vs F32 {r.Loss:F6} ({lossRel:E2} relative); global gradient norm {globalRel:E2} relative; " +
            $"per-tensor gradient norms: median {errors[errors.Count / 2]:E2}, worst {worst:E2} ({worstName}); {errors.Count} tensors");
        Assert.Equal(2 * 7 * model.Config.Layers, errors.Count);
        Assert.True(lossRel < lossTolerance, $"{file}: loss {loss} is {lossRel:E2} relative off the F32 reference {r.Loss}");
        Assert.True(worst < normTolerance, $"{file}: gradient norm of {worstName} is {worst:E2} relative off the F32 reference");
        // Without the adapter's q/k rows permuted for the GGUF, the loss moves far more than quantization does.
        Assert.True(Math.Abs(loss - r.LossWithoutLora) > 0, "the adapter changes the loss");
    }

    [Fact]
    public void GraphOnQ4KMDoesNotExpandTheBaseWeights()
    {
        if (TestPaths.Shared is null) { Console.WriteLine("skipped: ../shared is absent"); return; }
        using var model = LanguageModel.Load(Path.Combine(TestPaths.Shared, "models", "pycoder-29m-gguf", "pycoder-29m-q4_k_m.gguf"), 128);
        var c = model.Config;
        long f32Bytes = 4L * (2L * c.Vocab * c.Dim + c.Layers * ((long)c.Dim * (2 * c.QDim + 2 * c.KvDim) + 3L * c.Dim * c.FfnDim));
        var adapter = LoraAdapter.Create(c, LoraAdapter.AllTargets, 8, 16f, 1);
        var rng = new Random(2);
        int[][] sequences = [Enumerable.Range(0, 40).Select(_ => rng.Next(c.Vocab)).ToArray(), Enumerable.Range(0, 24).Select(_ => rng.Next(c.Vocab)).ToArray()];
        var batch = new TrainingBatch(sequences);

        GC.Collect();
        long managed0 = GC.GetTotalAllocatedBytes(precise: true), native0 = NativeBuffer.LiveBytes;
        var graph = new TrainingGraph(c, model.Weights, adapter, batch.Count, 2);
        long built = GC.GetTotalAllocatedBytes(precise: true) - managed0;
        graph.LossAndGradients(batch, 1f / batch.TargetCount);
        long afterStep = GC.GetTotalAllocatedBytes(precise: true) - managed0;
        graph.LossAndGradients(batch, 1f / batch.TargetCount);
        long secondStep = GC.GetTotalAllocatedBytes(precise: true) - managed0 - afterStep;
        long native = NativeBuffer.LiveBytes - native0;
        long predicted = TrainingGraph.ActivationBytes(c, batch.Count, 2, 8, LoraAdapter.AllTargets.ToArray());
        Console.WriteLine($"F32 weights would be {f32Bytes / 1048576.0:F1} MiB; building the graph allocated {built / 1048576.0:F2} MiB " +
            $"(ActivationBytes predicts {predicted / 1048576.0:F2} MiB), the first step {(afterStep - built) / 1048576.0:F2} MiB more, " +
            $"the second {secondStep / 1048576.0:F3} MiB; native buffers grew {native / 1048576.0:F2} MiB");
        // Measured: 7.6 MiB to build, 6.8 MiB more in the first step (Cut Cross-Entropy's 4 MiB block tiles, the tile
        // scratch), against 112 MiB of F32 weights: what the graph holds is its predicted activations and the
        // adapter's gradients, not the weights.
        long gradientBytes = adapter.Pairs.Sum(p => 4L * (p.A.Length + p.B.Length));
        Assert.True(afterStep < f32Bytes / 4, $"the graph and a step allocated {afterStep} bytes; the base weights in F32 are {f32Bytes}: they must not be expanded");
        Assert.True(afterStep < 1.1 * (predicted + gradientBytes) + (1 << 20), $"the graph and a step allocated {afterStep} bytes, more than its predicted {predicted} and the gradients' {gradientBytes}");
        Assert.True(native < f32Bytes / 10, $"native buffers grew {native} bytes");
        Assert.True(secondStep < f32Bytes / 100, $"a second step allocated {secondStep} bytes: scratch must be reused");
    }
}
