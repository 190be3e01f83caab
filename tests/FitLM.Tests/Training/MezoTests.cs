using FitLM.Adapters;
using FitLM.Training;
using Xunit;

namespace FitLM.Tests.Training;

public class MezoTests
{
    /// <summary>
    /// MeZO's (L₊ − L₋)/2ε estimates the directional derivative ∇L·z; backpropagation gives it exactly. The two agree
    /// on pycoder-29m with the reference adapter, which checks the perturbation, the seed trick and the loss together.
    /// </summary>
    [Fact]
    public void ProjectedGradientEqualsTheBackpropDirectionalDerivative()
    {
        if (TorchReference.Load() is not { } r) { Console.WriteLine("skipped: ../shared/finetune is absent"); return; }
        using var model = LanguageModel.Load(r.ModelFolder, 128);
        var batch = new[] { new TrainingBatch(r.Batch.Select(s => s[..64]).ToArray()) };
        int tokens = batch[0].Count;

        var exact = new LoraTrainer(model.Config, model.Weights, TorchReference.InitialAdapter(model.Config), tokens, 0, new OptimizerOptions { Clip = 0 });
        double lossExact = exact.ComputeGradients(batch);

        var adapter = TorchReference.InitialAdapter(model.Config);
        var before = adapter.Pairs.SelectMany(p => new[] { (float[])p.A.Clone(), (float[])p.B.Clone() }).ToArray();
        var mezo = new MezoTrainer(model.Config, model.Weights, adapter, tokens, new MezoOptions { Epsilon = 1e-3f, LearningRate = 1e-30f, Seed = 7 });
        var z = mezo.Direction(0);
        double loss = mezo.Step(batch);

        double directional = 0;
        int k = 0;
        foreach (var t in exact.Graph.Trainable)
            foreach (var g in new[] { t.GradA, t.GradB })
            {
                for (int i = 0; i < g.Length; i++) directional += (double)g[i] * z[k][i];
                k++;
            }
        Console.WriteLine($"MeZO loss {loss:F6} (exact {lossExact:F6}); projected gradient {mezo.LastProjectedGradient:F4}, backprop ∇L·z {directional:F4}");
        Assert.True(Math.Abs(loss - lossExact) < 1e-3 * lossExact, $"MeZO's loss {loss} vs {lossExact}");
        Assert.True(Math.Abs(mezo.LastProjectedGradient - directional) < 0.05 * Math.Abs(directional) + 0.05,
            $"projected gradient {mezo.LastProjectedGradient} vs ∇L·z {directional}");

        // +εz, −2εz, +εz and a step of lr ≈ 0 leave the parameters where they were (to float rounding).
        var after = adapter.Pairs.SelectMany(p => new[] { p.A, p.B }).ToArray();
        for (int j = 0; j < after.Length; j++)
            for (int i = 0; i < after[j].Length; i++)
                Assert.True(Math.Abs(after[j][i] - before[j][i]) < 1e-6f, $"parameter {j}[{i}] moved from {before[j][i]} to {after[j][i]}");
    }

    [Fact]
    public void StepsLowerTheLossOnAFixedBatch()
    {
        if (TorchReference.Load() is not { } r) { Console.WriteLine("skipped: ../shared/finetune is absent"); return; }
        using var model = LanguageModel.Load(r.ModelFolder, 64);
        var batch = new[] { new TrainingBatch(r.Batch.Select(s => s[..32]).ToArray()) };
        var adapter = LoraAdapter.Create(model.Config, LoraAdapter.AllTargets, 8, 16, 1);
        var mezo = new MezoTrainer(model.Config, model.Weights, adapter, batch[0].Count, new MezoOptions { LearningRate = 2e-3f, Seed = 3 });
        double first = mezo.Step(batch), last = first;
        for (int s = 0; s < 40; s++) last = mezo.Step(batch);
        Console.WriteLine($"MeZO on a fixed batch: {first:F5} → {last:F5} in 41 steps");
        Assert.True(last < first, $"MeZO did not lower the loss: {first} → {last}");
    }
}
