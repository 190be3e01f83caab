using FitLM.KvCache;
using FitLM.Model;
using Xunit;
using Xunit.Abstractions;

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
            // Every row is computed by the same kernels whatever the batch: identical up to float reassociation
            // in the GEMM blocking (in practice 0).
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
