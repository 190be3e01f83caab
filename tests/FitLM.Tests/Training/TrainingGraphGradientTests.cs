using Xunit;
using FitLM.Adapters;
using FitLM.Model;
using FitLM.Training;
using static FitLM.Tests.Training.GradientCheck;

namespace FitLM.Tests.Training;

/// <summary>
/// The whole training graph on tiny models with every option it supports (Q/K/V biases, per-head Q/K norms,
/// 1, 2 and 4 query heads per KV head, both RoPE layouts and partial rotation, SiLU, ReLU and GELU gates, tied
/// embeddings): its loss equals the inference forward pass with the adapter merged, LoRA gradients equal central
/// differences of the loss, and checkpoint segments change nothing.
/// </summary>
public class TrainingGraphGradientTests
{
    public static TheoryData<string> Variants => ["qwen3", "qwen2-relu-interleaved", "gelu-partial-rope-tied", "llama-mha"];

    private static (ModelConfig Config, bool Tied) Variant(string name, int layers = 3) => name switch
    {
        // Qwen3: per-head Q/K norms, 2 query heads per KV head, rotate-half RoPE, QDim ≠ Dim.
        "qwen3" => (Config(dim: 24, layers: layers, heads: 4, kvHeads: 2, headDim: 8, ffn: 40, vocab: 45, qkNorm: true, arch: "qwen3"), false),
        // Qwen2-style biases on a ReLU model with llama.cpp's interleaved RoPE and 4 query heads per KV head.
        "qwen2-relu-interleaved" => (Config(dim: 20, layers: layers, heads: 4, kvHeads: 1, headDim: 6, ffn: 36, vocab: 37,
            rope: RopeStyle.Interleaved, act: FfnActivation.Relu, qkvBias: true, arch: "qwen2"), false),
        // Everything at once: biases and Q/K norms, GELU, RoPE on 4 of 10 dimensions, output tied to the embedding.
        "gelu-partial-rope-tied" => (Config(dim: 16, layers: layers, heads: 2, kvHeads: 1, headDim: 10, ffn: 28, vocab: 33,
            ropeDims: 4, act: FfnActivation.Gelu, qkvBias: true, qkNorm: true), true),
        _ => (Config(dim: 16, layers: layers, heads: 2, kvHeads: 2, headDim: 8, ffn: 24, vocab: 40), false),
    };

    /// <summary>Two sequences of different lengths in one batch.</summary>
    private static TrainingBatch Batch(int vocab, int seed)
    {
        var rng = new Random(seed);
        return new TrainingBatch([
            Enumerable.Range(0, 7).Select(_ => rng.Next(vocab)).ToArray(),
            Enumerable.Range(0, 5).Select(_ => rng.Next(vocab)).ToArray(),
        ]);
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void LossEqualsInferenceWithTheAdapterMerged(string variant)
    {
        var (c, tied) = Variant(variant);
        using var model = TinyTrainingModel.Create(c, 11, tied);
        var adapter = model.Adapter(LoraAdapter.AllTargets, 3, 6f, 12);
        var batch = Batch(c.Vocab, 13);
        var graph = new TrainingGraph(c, model.Weights, adapter, batch.Count);
        double loss = graph.Loss(batch);

        using var merged = model.Merged(adapter);
        var transformer = new Transformer(c, merged, 16, 16);
        double expected = 0;
        var logits = new float[8 * c.Vocab];
        foreach (var (start, len) in batch.Sequences)
        {
            transformer.Forward(batch.Tokens.AsSpan(start, len), 0, logits, 0);
            for (int t = 0; t < len - 1; t++)
            {
                var row = logits.AsSpan(t * c.Vocab, c.Vocab);
                double max = double.NegativeInfinity, sum = 0;
                foreach (float v in row) max = Math.Max(max, v);
                foreach (float v in row) sum += Math.Exp(v - max);
                expected += max + Math.Log(sum) - row[batch.Tokens[start + t + 1]];
            }
        }
        Console.WriteLine($"{variant}: training graph loss {loss:F6}, inference with merged adapter {expected:F6}");
        Assert.True(Math.Abs(loss - expected) <= 1e-4 * expected, $"{variant}: the training graph's loss {loss} differs from inference's {expected}");

        double withGradients = graph.LossAndGradients(batch, 1f);
        Assert.True(Math.Abs(withGradients - loss) <= 1e-6 * loss, $"LossAndGradients {withGradients} vs Loss {loss}");
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void LoraGradientsMatchCentralDifferences(string variant)
    {
        var (c, tied) = Variant(variant);
        using var model = TinyTrainingModel.Create(c, 21, tied);
        var adapter = model.Adapter(LoraAdapter.AllTargets, 3, 6f, 22);
        var batch = Batch(c.Vocab, 23);
        var graph = new TrainingGraph(c, model.Weights, adapter, batch.Count);
        graph.LossAndGradients(batch, 1f);

        // Ten entries of A and B, spread over layers and projections; the loss in float is summed over 10 targets
        // (≈ 36), so its rounding (≈ 4e-6) over 2h = 2e-2 leaves ≈ 2e-4 of noise in each difference quotient.
        var rng = new Random(24);
        // A ReLU gate has kinks: a step of 1e-2 moved some gate input across zero here (error 1.8e-2, falling to
        // 8.5e-5 at 3e-3 for that entry), so the ReLU model takes the smaller step, at about 3x the rounding noise.
        float h = c.Activation == FfnActivation.Relu ? 3e-3f : 1e-2f;
        int checkedEntries = 0;
        double worst = 0;
        foreach (int i in Enumerable.Range(0, 10))
        {
            var t = graph.Trainable[(i * graph.Trainable.Count / 10 + rng.Next(graph.Trainable.Count / 10 + 1)) % graph.Trainable.Count];
            bool isA = i % 2 == 0;
            var param = isA ? t.Pair.A : t.Pair.B;
            var grad = isA ? t.GradA : t.GradB;
            int j = rng.Next(param.Length);
            float keep = param[j];
            param[j] = keep + h;
            double plus = graph.Loss(batch);
            param[j] = keep - h;
            double minus = graph.Loss(batch);
            param[j] = keep;
            double fd = (plus - minus) / (2 * h);
            double scale = Math.Sqrt(grad.Sum(g => (double)g * g) / grad.Length);
            double err = Math.Abs(fd - grad[j]) / (Math.Abs(fd) + scale);
            worst = Math.Max(worst, err);
            Console.WriteLine($"{variant}: {t.Pair.Name} {(isA ? 'A' : 'B')}[{j}] analytic {grad[j]:E4} finite difference {fd:E4} (error {err:E1} of |fd| + rms {scale:E2})");
            Assert.True(err < 1e-2, $"{variant}: ∂loss/∂{t.Pair.Name}.{(isA ? 'A' : 'B')}[{j}] is {grad[j]:E4}, finite differences give {fd:E4}");
            checkedEntries++;
        }
        Assert.Equal(10, checkedEntries);
        Console.WriteLine($"{variant}: worst relative error {worst:E2}");
    }

    /// <summary>Real loaders on ../shared/models/zoo (Hugging Face folders, BF16): Qwen2 biases, Qwen3 Q/K norms, Llama 3 RoPE scaling.</summary>
    [Theory]
    [InlineData("tiny-qwen2")]
    [InlineData("tiny-qwen3")]
    [InlineData("tiny-llama3")]
    public void ZooModelGradientsMatchCentralDifferences(string name)
    {
        if (TestPaths.Shared is null) { Console.WriteLine("skipped: ../shared is absent"); return; }
        string dir = Path.Combine(TestPaths.Shared, "models", "zoo", name);
        using var model = LanguageModel.Load(dir, 64);
        var c = model.Config;
        var ids = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "reference.json"))).RootElement
            .GetProperty("prompt_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        var batch = new TrainingBatch([ids[..30], ids[30..]]);

        // Without an adapter the graph's loss is inference's.
        var plain = new TrainingGraph(c, model.Weights, null, batch.Count);
        double loss = plain.Loss(batch), expected = 0;
        var logits = new float[30 * c.Vocab];
        foreach (var (start, len) in batch.Sequences)
        {
            model.Transformer.Forward(batch.Tokens.AsSpan(start, len), 0, logits, 0);
            for (int t = 0; t < len - 1; t++)
            {
                var row = logits.AsSpan(t * c.Vocab, c.Vocab);
                double max = double.NegativeInfinity, sum = 0;
                foreach (float v in row) max = Math.Max(max, v);
                foreach (float v in row) sum += Math.Exp(v - max);
                expected += max + Math.Log(sum) - row[batch.Tokens[start + t + 1]];
            }
        }
        Assert.True(Math.Abs(loss - expected) <= 1e-4 * expected, $"{name}: training graph loss {loss}, inference {expected}");

        var adapter = LoraAdapter.Create(c, LoraAdapter.AllTargets, 4, 8f, 51);
        var rng = new Random(52);
        foreach (var p in adapter.Pairs)
            for (int i = 0; i < p.B.Length; i++) p.B[i] = (float)(rng.NextDouble() - 0.5) * 0.2f;
        var graph = new TrainingGraph(c, model.Weights, adapter, batch.Count, 1);
        graph.LossAndGradients(batch, 1f);
        double worst = 0;
        for (int i = 0; i < 10; i++)
        {
            var t = graph.Trainable[rng.Next(graph.Trainable.Count)];
            bool isA = i % 2 == 0;
            var param = isA ? t.Pair.A : t.Pair.B;
            var grad = isA ? t.GradA : t.GradB;
            int j = rng.Next(param.Length);
            const float h = 1e-2f;
            float keep = param[j];
            param[j] = keep + h;
            double plus = graph.Loss(batch);
            param[j] = keep - h;
            double minus = graph.Loss(batch);
            param[j] = keep;
            double fd = (plus - minus) / (2 * h), rms = Math.Sqrt(grad.Average(g => (double)g * g));
            double err = Math.Abs(fd - grad[j]) / (Math.Abs(fd) + rms);
            worst = Math.Max(worst, err);
            Assert.True(err < 1e-2, $"{name}: ∂loss/∂{t.Pair.Name}.{(isA ? 'A' : 'B')}[{j}] is {grad[j]:E4}, finite differences give {fd:E4}");
        }
        Console.WriteLine($"{name}: loss {loss:F5} (inference {expected:F5}); worst gradient error {worst:E2} over 10 entries");
    }

    [Fact]
    public void SmallerBatchAfterALargerOneGivesTheSameGradients()
    {
        var (c, tied) = Variant("gelu-partial-rope-tied");
        using var model = TinyTrainingModel.Create(c, 61, tied);
        var small = new TrainingBatch([[3, 1, 4, 1, 5], [9, 2, 6]]);
        var fresh = new TrainingGraph(c, model.Weights, model.Adapter(LoraAdapter.AllTargets, 2, 4f, 62), 12);
        double expected = fresh.LossAndGradients(small, 1f);

        var reused = new TrainingGraph(c, model.Weights, model.Adapter(LoraAdapter.AllTargets, 2, 4f, 62), 12);
        reused.LossAndGradients(Batch(c.Vocab, 63), 1f); // fills every buffer of 12 tokens
        foreach (var t in reused.Trainable) { Array.Clear(t.GradA); Array.Clear(t.GradB); }
        Assert.Equal(expected, reused.LossAndGradients(small, 1f));
        for (int i = 0; i < fresh.Trainable.Count; i++)
        {
            Assert.True(fresh.Trainable[i].GradA.AsSpan().SequenceEqual(reused.Trainable[i].GradA), $"{fresh.Trainable[i].Pair.Name} A");
            Assert.True(fresh.Trainable[i].GradB.AsSpan().SequenceEqual(reused.Trainable[i].GradB), $"{fresh.Trainable[i].Pair.Name} B");
        }
    }

    [Fact]
    public void MicroBatchesAccumulateToTheWholeBatchGradient()
    {
        var (c, _) = Variant("qwen3");
        using var model = TinyTrainingModel.Create(c, 71);
        int[][] seqs = [[1, 2, 3, 4, 5, 6], [7, 8, 9], [10, 11, 12, 13]];
        var options = new OptimizerOptions { Clip = 0, Cosine = false };
        var whole = new LoraTrainer(c, model.Weights, model.Adapter(LoraAdapter.AllTargets, 2, 4f, 72), 13, 0, options);
        double wholeLoss = whole.ComputeGradients([new TrainingBatch(seqs)]);
        var split = new LoraTrainer(c, model.Weights, model.Adapter(LoraAdapter.AllTargets, 2, 4f, 72), 7, 0, options);
        split.ComputeGradients([new TrainingBatch([seqs[0]])]); // stale gradients must be cleared by the next call
        double splitLoss = split.ComputeGradients([new TrainingBatch([seqs[0]]), new TrainingBatch([seqs[1], seqs[2]])]);
        Assert.True(Math.Abs(wholeLoss - splitLoss) <= 1e-6 * wholeLoss, $"mean loss {splitLoss} over micro-batches vs {wholeLoss} over the whole batch");
        for (int i = 0; i < whole.Graph.Trainable.Count; i++)
        {
            var (w, s) = (whole.Graph.Trainable[i], split.Graph.Trainable[i]);
            AssertClose(ToDouble(w.GradA), s.GradA, 1e-5, w.Pair.Name + " A");
            AssertClose(ToDouble(w.GradB), s.GradB, 1e-5, w.Pair.Name + " B");
        }
    }

    [Fact]
    public void CheckpointSegmentsGiveBitIdenticalLossAndGradients()
    {
        var (c, _) = Variant("qwen3", layers: 4);
        using var model = TinyTrainingModel.Create(c, 31);
        var batch = Batch(c.Vocab, 33);
        double[] losses = new double[4];
        float[][][] grads = new float[4][][];
        foreach (int seg in new[] { 0, 1, 2, 3 }) // 3: segments of 3 and 1 layers
        {
            var adapter = model.Adapter(["q", "v", "down", "gate"], 2, 4f, 32);
            var graph = new TrainingGraph(c, model.Weights, adapter, batch.Count, seg);
            Assert.Equal(seg == 0 ? 4 : seg, graph.SegmentLayers);
            losses[seg] = graph.LossAndGradients(batch, 0.1f);
            grads[seg] = graph.Trainable.SelectMany(t => new[] { t.GradA, t.GradB }).ToArray();
        }
        for (int seg = 1; seg < 4; seg++)
        {
            Assert.Equal(losses[0], losses[seg]);
            Assert.Equal(grads[0].Length, grads[seg].Length);
            for (int i = 0; i < grads[0].Length; i++)
                Assert.True(grads[0][i].AsSpan().SequenceEqual(grads[seg][i]), $"segments of {seg}: gradient tensor {i} differs from no checkpointing");
        }
        Assert.Contains(grads[0], g => g.Any(v => v != 0));
    }
}
