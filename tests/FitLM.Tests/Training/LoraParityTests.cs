using Xunit;
using FitLM.Training;

namespace FitLM.Tests.Training;

/// <summary>Acceptance 1 of the fine-tuning issue: FitLM's LoRA loss, gradients and AdamW run against PyTorch's.</summary>
public class LoraParityTests
{
    [Fact]
    public void LossAndEveryGradientMatchPyTorch()
    {
        if (TorchReference.Load() is not { } r) { Console.WriteLine("skipped: ../shared/finetune is absent"); return; }
        using var model = LanguageModel.Load(r.ModelFolder, 128);
        var adapter = TorchReference.InitialAdapter(model.Config);
        var trainer = new LoraTrainer(model.Config, model.Weights, adapter, r.Batch.Sum(s => s.Length), 0, new OptimizerOptions { Clip = 0, Cosine = false });
        double loss = trainer.ComputeGradients([new TrainingBatch(r.Batch)]);
        Assert.True(Math.Abs(loss - r.Loss) / r.Loss < 1e-4, $"loss {loss} vs PyTorch {r.Loss}");

        var l2 = r.Json.GetProperty("grad_l2");
        var first8 = r.Json.GetProperty("grad_first8");
        double worst = 0;
        string worstName = "";
        foreach (var t in trainer.Graph.Trainable)
            foreach (var (ab, grad) in new[] { ('A', t.GradA), ('B', t.GradB) })
            {
                string name = TorchReference.PeftName(t.Pair.Name, ab);
                double expected = l2.GetProperty(name).GetDouble();
                double actual = Math.Sqrt(grad.Sum(g => (double)g * g));
                double rel = Math.Abs(actual - expected) / expected;
                if (rel > worst) { worst = rel; worstName = name; }
                var f8 = first8.GetProperty(name).EnumerateArray().Select(e => e.GetDouble()).ToArray();
                for (int i = 0; i < 8; i++)
                    Assert.True(Math.Abs(grad[i] - f8[i]) <= 2e-3 * expected / Math.Sqrt(grad.Length) + 1e-3 * Math.Abs(f8[i]) + 1e-9,
                        $"{name}[{i}] = {grad[i]} vs PyTorch {f8[i]}");
            }
        Console.WriteLine($"loss {loss:F7} vs {r.Loss:F7}; worst gradient-norm relative error {worst:E2} ({worstName})");
        Assert.True(worst < 1e-3, $"gradient norm of {worstName} is {worst:E2} relative off PyTorch's");
    }

    [Fact]
    public void TwentyAdamWStepsFollowPyTorch()
    {
        if (TorchReference.Load() is not { } r) { Console.WriteLine("skipped: ../shared/finetune is absent"); return; }
        using var model = LanguageModel.Load(r.ModelFolder, 128);
        var adapter = TorchReference.InitialAdapter(model.Config);
        var trainer = new LoraTrainer(model.Config, model.Weights, adapter, r.Batch.Sum(s => s.Length), 0,
            new OptimizerOptions { LearningRate = 1e-3f, Clip = 0, Cosine = false, TotalSteps = 20 });
        var expected = r.Json.GetProperty("adamw").GetProperty("loss_before_each_step").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        var batch = new[] { new TrainingBatch(r.Batch) };
        for (int s = 0; s < expected.Length; s++)
        {
            double loss = trainer.Step(batch);
            Console.WriteLine($"step {s} loss {loss:F6} torch {expected[s]:F6}");
            Assert.True(Math.Abs(loss - expected[s]) / expected[s] < 1e-3, $"step {s}: loss {loss} vs PyTorch {expected[s]}");
        }
    }
}
