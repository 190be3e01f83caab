using FitLM.Adapters;
using FitLM.Memory;
using FitLM.Training;
using FitLM.Weights;
using Xunit;

namespace FitLM.Tests.Training;

/// <summary>Training over streamed base weights (the planner's choice when they do not fit) computes what resident training does.</summary>
public class StreamedTrainingTests
{
    [Fact]
    public void StreamedWeightsGiveTheSameGradientsAsResidentOnes()
    {
        var batch = new TrainingBatch([Enumerable.Range(0, 24).Select(i => 100 + 37 * i % 900).ToArray(), Enumerable.Range(0, 16).Select(i => 50 + 11 * i).ToArray()]);
        float[][] Gradients(LoadOptions o, out double loss, out bool streamed)
        {
            using var m = LanguageModel.Load(TestPaths.DemoModel, o);
            streamed = m.Weights is StreamingWeights;
            var adapter = LoraAdapter.Create(m.Config, ["q", "v", "down"], 4, 8, 5);
            foreach (var p in adapter.Pairs) for (int i = 0; i < p.B.Length; i++) p.B[i] = 0.01f * ((i * 7919 % 13) - 6);
            var t = new LoraTrainer(m.Config, m.Weights, adapter, batch.Count, 2, new OptimizerOptions());
            loss = t.ComputeGradients([batch]);
            return t.Graph.Trainable.SelectMany(p => new[] { p.GradA, p.GradB }).ToArray();
        }
        var resident = Gradients(new LoadOptions { ContextLength = 32, MaxBatch = 1 }, out double lossResident, out bool s0);
        var streamedGrads = Gradients(new LoadOptions { ContextLength = 32, MaxBatch = 1, Stream = StreamMode.Naive }, out double lossStreamed, out bool s1);
        Assert.False(s0);
        Assert.True(s1, "the naive mode should stream the weights");
        Assert.Equal(lossResident, lossStreamed);
        for (int j = 0; j < resident.Length; j++) Assert.Equal(resident[j], streamedGrads[j]);
    }
}
