using FitLM.KvCache;
using FitLM.Model;
using FitLM.Tensors;
using Xunit;
using Xunit.Abstractions;
using FitLM.Conversion;
using FitLM.Memory;

namespace FitLM.Tests.Model;

/// <summary>
/// The multi-sequence forward (continuous batching): sequences at different positions, each with its own KV
/// store, run in one pass and get the logits each gets alone.
/// </summary>
public class BatchedForwardTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData("f32")]
    [InlineData("kivi4")]
    public void ThreeSequencesAtDifferentPositionsMatchEachAlone(string kv)
    {
        using var lm = LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = 256, Kv = KvCacheOptions.Parse(kv) });
        var tf = lm.Transformer;
        int vocab = lm.Config.Vocab;
        int[][] prompts =
        [
            lm.Tokenizer.Encode("def fibonacci(n):\n    if n < 2:"),
            lm.Tokenizer.Encode("import os\nimport sys\n\nclass Config:\n    def __init__(self, path):\n        self.path = path"),
            lm.Tokenizer.Encode("for i in range(10):"),
        ];
        int[][] next = [[17, 300, 5], [42], [7, 8]]; // the tokens each sequence then feeds, in one batched pass

        // Alone: prefill, then the next tokens, through the single-sequence path.
        var alone = new float[prompts.Length][];
        for (int s = 0; s < prompts.Length; s++)
        {
            tf.Forward(prompts[s], 0, new float[vocab], prompts[s].Length - 1);
            alone[s] = new float[vocab];
            tf.Forward(next[s], prompts[s].Length, alone[s], next[s].Length - 1); // logits of the last row only
        }

        // Together: each sequence its own store; prefill them in one batch, then the next tokens in another.
        var stores = prompts.Select(_ => tf.KvStores.Create()).ToArray();
        try
        {
            var prefill = prompts.Select((p, s) => new SequenceSlice(stores[s], p, 0, WantLogits: false)).ToArray();
            tf.Forward(prefill, Span<float>.Empty);
            var step = next.Select((t, s) => new SequenceSlice(stores[s], t, prompts[s].Length, WantLogits: true)).ToArray();
            var together = new float[prompts.Length * vocab];
            tf.Forward(step, together);
            double worst = 0;
            for (int s = 0; s < prompts.Length; s++)
                for (int i = 0; i < vocab; i++)
                    worst = Math.Max(worst, Math.Abs(together[s * vocab + i] - alone[s][i]));
            output.WriteLine($"{kv}: largest difference batched vs alone {worst:E2}");
            // Alone, one-row products take the matrix-vector kernel; in a batch, the matrix-matrix one, which sums
            // in another order: equal up to float reassociation (measured: 4-5e-6 on logits of magnitude ~10).
            Assert.True(worst <= 1e-5, $"batched logits differ from single-sequence ones by {worst}");
            for (int s = 0; s < prompts.Length; s++)
                Assert.Equal(prompts[s].Length + next[s].Length, stores[s].Length);
        }
        finally
        {
            foreach (var st in stores) st.Dispose();
        }
        tf.Kv.Truncate(0);
        Assert.Equal(0, tf.KvStores.Pool.PagesInUse);
        Assert.Equal(0, tf.KvStores.SecondPool?.PagesInUse ?? 0);
    }

    [Fact]
    public void RejectsBatchesLargerThanMaxBatchAndSharedStores()
    {
        using var lm = LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = 64, MaxBatch = 8 });
        var tf = lm.Transformer;
        using var a = tf.KvStores.Create();
        using var b = tf.KvStores.Create();
        var logits = new float[2 * lm.Config.Vocab];
        Assert.Throws<ArgumentException>(() => tf.Forward([new SequenceSlice(a, new int[5], 0, true), new SequenceSlice(b, new int[4], 0, true)], logits));
        Assert.Throws<ArgumentException>(() => tf.Forward([new SequenceSlice(a, new int[1], 0, true), new SequenceSlice(a, new int[1], 1, true)], logits));
        Assert.Throws<FitLMException>(() => tf.Forward([new SequenceSlice(a, new int[2], 63, true)], logits));
    }
}

/// <summary>
/// Batch invariance (how the server decodes): with <see cref="MatMul.RowWise"/> every row of a product is computed
/// exactly as a one-row product, so a sequence decoded in a batch gets the logits it gets alone, bit for bit.
/// </summary>
[Collection(SequentialCollection.Name)] // keep away from the timing-sensitive tests
public class BatchInvarianceTests(ITestOutputHelper output)
{
    [Fact]
    public void RowWiseProductsEqualOneRowProducts()
    {
        using var lm = LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = 64 });
        var rng = new Random(7);
        foreach (var name in new[] { "blk.0.attn_q.weight", "blk.0.attn_v.weight", "blk.0.ffn_down.weight", "output.weight" })
        {
            var m = lm.Weights.Matrix(name);
            int cols = m.Cols, rows = m.Rows, n = 9;
            var x = new float[n * cols];
            for (int i = 0; i < x.Length; i++) x[i] = (float)((rng.NextDouble() - 0.5) * (rng.Next(50) == 0 ? 40 : 2));
            var batch = new float[n * rows];
            using (MatMul.RowWiseScope(true)) m.Multiply(x, batch, n);
            for (int t = 0; t < n; t++)
            {
                var one = new float[rows];
                m.Multiply(x.AsSpan(t * cols, cols), one, 1);
                Assert.True(one.AsSpan().SequenceEqual(batch.AsSpan(t * rows, rows)), $"{name}: row {t} of a row-wise batch differs from its one-row product");
            }
        }
    }

    [Fact]
    public void EightSequencesDecodedTogetherGetExactlyTheirLogitsAlone() => EightSequencesTogetherEqualAlone(TestPaths.DemoModel);

    /// <summary>
    /// The same on the demo model's Hugging Face weights converted to q8_0 and f16: the types with multi-token
    /// decode kernels (the demo file's q4_K/q6_K run the one-token kernel per sequence).
    /// </summary>
    [Theory]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.F16)]
    public void EightSequencesTogetherEqualAlone_MultiTokenKernels(GgmlType type)
    {
        if (TestPaths.Shared is not { } shared) { output.WriteLine("../shared is absent: skipped"); return; }
        var dir = Directory.CreateTempSubdirectory("fitlm-batch-");
        try
        {
            string path = Path.Combine(dir.FullName, $"pycoder-{type}.gguf");
            HfToGgufConverter.Convert(Path.Combine(shared, "models", "pycoder-29m"), path, type);
            EightSequencesTogetherEqualAlone(path);
        }
        finally { dir.Delete(true); }
    }

    private void EightSequencesTogetherEqualAlone(string model)
    {
        using var lm = LanguageModel.Load(model, new LoadOptions { ContextLength = 256 });
        var tf = lm.Transformer;
        int vocab = lm.Config.Vocab, n = 8, steps = 12;
        var prompts = Enumerable.Range(0, n).Select(i => lm.Tokenizer.Encode(string.Concat(Enumerable.Repeat($"def check_{i}(x):\n    return x * {i}\n", i % 3 + 1)))).ToArray();
        int[][] fed = Enumerable.Range(0, n).Select(i => Enumerable.Range(0, steps).Select(t => 100 + 37 * t + i).ToArray()).ToArray();

        // Logits after the prompt and after each fed token, running `width` sequences per batch.
        float[][][] Run(int width)
        {
            var res = new float[n][][];
            var logits = new float[width * vocab];
            for (int s0 = 0; s0 < n; s0 += width)
            {
                var stores = Enumerable.Range(0, width).Select(_ => tf.KvStores.Create()).ToArray();
                for (int k = 0; k < width; k++) tf.Forward([new SequenceSlice(stores[k], prompts[s0 + k], 0, true)], logits.AsSpan(k * vocab, vocab));
                for (int k = 0; k < width; k++) res[s0 + k] = new float[steps + 1][];
                for (int t = 0; ; t++)
                {
                    for (int k = 0; k < width; k++) res[s0 + k][t] = logits.AsSpan(k * vocab, vocab).ToArray();
                    if (t == steps) break;
                    tf.Forward(Enumerable.Range(0, width).Select(k => new SequenceSlice(stores[k], new[] { fed[s0 + k][t] }, prompts[s0 + k].Length + t, true)).ToArray(), logits, batchInvariant: true);
                }
                foreach (var st in stores) st.Dispose();
            }
            return res;
        }

        // Prompts are prefilled one per pass, as the server does; then the decode steps run all together row-wise.
        var alone = Run(1);
        var together = Run(8);
        for (int s = 0; s < n; s++)
            for (int t = 0; t <= steps; t++)
                Assert.True(alone[s][t].AsSpan().SequenceEqual(together[s][t]), $"sequence {s}, step {t}: batched logits differ from the logits alone");

        // And alone equals the single-sequence path `fitlm run` takes (prefill, then one token at a time).
        var single = new float[vocab];
        tf.Forward(prompts[3], 0, single, prompts[3].Length - 1);
        Assert.True(single.AsSpan().SequenceEqual(alone[3][0]));
        for (int t = 0; t < steps; t++)
        {
            tf.Forward(fed[3].AsSpan(t, 1), prompts[3].Length + t, single, 0);
            Assert.True(single.AsSpan().SequenceEqual(alone[3][t + 1]), $"step {t}: the single-sequence path differs");
        }
        output.WriteLine($"{n} sequences (prompts {prompts.Min(p => p.Length)}..{prompts.Max(p => p.Length)} tokens), {steps} steps: identical");
    }
}
