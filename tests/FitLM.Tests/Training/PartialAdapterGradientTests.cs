using Xunit;
using FitLM.Adapters;
using FitLM.Tests.Cli;
using FitLM.Training;

namespace FitLM.Tests.Training;

/// <summary>Adapters that do not cover every layer the same way (PEFT's layers_to_transform, a hand-made adapter).</summary>
public class PartialAdapterGradientTests
{
    [Fact]
    public void AdapterThatSkipsTheFirstLayerTrainsAndMatchesCentralDifferences()
    {
        var c = GradientCheck.Config(dim: 16, layers: 3, heads: 2, kvHeads: 1, headDim: 8, ffn: 24, vocab: 30);
        using var model = TinyTrainingModel.Create(c, 41);
        var full = model.Adapter(["q", "down"], 2, 4f, 42);
        // q on layers 1 and 2 only, down on layer 0 only: layer 0's projections are not the widest.
        var pairs = full.Pairs.Where(p => p.Name is "blk.1.attn_q.weight" or "blk.2.attn_q.weight" or "blk.0.ffn_down.weight").ToArray();
        var adapter = new LoraAdapter(2, 4f, ["q", "down"], pairs);
        var batch = new TrainingBatch([[1, 5, 9, 2, 7], [3, 3, 8, 4]]);
        foreach (int seg in new[] { 0, 1 })
        {
            var graph = new TrainingGraph(c, model.Weights, adapter, batch.Count, seg);
            Assert.Equal(3, graph.Trainable.Count);
            graph.LossAndGradients(batch, 1f);
            foreach (var t in graph.Trainable)
            {
                int j = t.Pair.A.Length / 2;
                float keep = t.Pair.A[j];
                t.Pair.A[j] = keep + 1e-2f;
                double plus = graph.Loss(batch);
                t.Pair.A[j] = keep - 1e-2f;
                double minus = graph.Loss(batch);
                t.Pair.A[j] = keep;
                double fd = (plus - minus) / 2e-2, rms = Math.Sqrt(t.GradA.Average(g => (double)g * g));
                Assert.True(Math.Abs(fd - t.GradA[j]) < 1e-2 * (Math.Abs(fd) + rms), $"{t.Pair.Name} A[{j}]: {t.GradA[j]} vs finite differences {fd}");
            }
        }
    }

    /// <summary>
    /// The same through the CLI: a PEFT adapter whose first layer lacks a projection that later layers adapt, as
    /// --adapter-init. Before the fix the graph sized every layer's LoRA activations by layer 0's and the run
    /// crashed with "product size mismatch".
    /// </summary>
    [Fact]
    public void FinetuneStartsFromAnAdapterThatSkipsTheFirstLayer()
    {
        string dir = Path.Combine(Path.GetTempPath(), "fitlm-partial-" + Guid.NewGuid().ToString("N"));
        try
        {
            using (var model = LanguageModel.Load(TestPaths.DemoModel, 32))
            {
                var full = LoraAdapter.Create(model.Config, ["q", "down"], 2, 4f, 3);
                var pairs = full.Pairs.Where(p => p.Name.EndsWith("attn_q.weight") ? !p.Name.StartsWith("blk.0.") : p.Name.StartsWith("blk.0.")).ToArray();
                PeftAdapterFolder.Write(new LoraAdapter(2, 4f, ["q", "down"], pairs), Path.Combine(dir, "init"), model.Source);
            }
            string ids = Path.Combine(dir, "ids.json");
            File.WriteAllText(ids, "[[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 22, 23, 24, 25, 26, 27]]");
            var r = CliRunner.Run("finetune", "-m", TestPaths.DemoModel, "--train-ids", ids, "--adapter-init", Path.Combine(dir, "init"),
                "--steps", "2", "-c", "16", "-t", "2", "-o", Path.Combine(dir, "out"));
            Assert.True(r.ExitCode == 0, $"exit {r.ExitCode}: {r.StdErr}");
            Assert.Contains("step 1 loss", r.StdOut + r.StdErr);
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }
}
