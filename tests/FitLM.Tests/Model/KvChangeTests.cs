using FitLM.Chat;
using FitLM.Generation;
using FitLM.KvCache;
using FitLM.Memory;
using FitLM.Model;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Model;

/// <summary>
/// Transformer.ChangeKv on the demo model: the KV cache moves to another type in the middle of a greedy
/// generation and decoding goes on. Only what is guaranteed is asserted: a change that keeps every value
/// (the same type, or KIVI while its float16 window still covers the context) leaves the logits bit for bit.
/// </summary>
public class KvChangeTests(ITestOutputHelper output)
{
    private static KvCacheOptions Kv(string spec) => KvCacheOptions.Parse(spec);

    /// <summary>
    /// Greedy decoding of <paramref name="steps"/> tokens after a prompt; before step i, the cache moves to
    /// changes[i] where there is one. Returns the logits of every step.
    /// </summary>
    private static float[][] Decode(KvCacheOptions start, int[] prompt, int steps, Dictionary<int, KvCacheOptions> changes, Action<Transformer, int>? check = null)
    {
        using var lm = LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = 256, MaxBatch = 64, Kv = start });
        var tf = lm.Transformer;
        int vocab = lm.Config.Vocab, pos = prompt.Length;
        var logits = new float[steps][];
        var last = new float[vocab];
        tf.Forward(prompt, 0, last, prompt.Length - 1);
        for (int i = 0; i < steps; i++)
        {
            if (changes.TryGetValue(i, out var next))
            {
                var old = tf.KvStores;
                tf.ChangeKv(next);
                Assert.Equal(next, tf.KvStores.Options);
                Assert.Equal(pos, tf.Kv.Length);
                Assert.Equal(0, old.Pool.BytesReserved); // the old factory is gone, its memory with it
                check?.Invoke(tf, pos);
            }
            int token = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(last);
            logits[i] = (float[])last.Clone();
            tf.Forward([token], pos++, last, 0);
        }
        return logits;
    }

    private static int[] Prompt(int n) => Enumerable.Range(0, n).Select(i => 1 + (i * 7919) % 8000).ToArray();

    [Fact]
    public void ChangesThatKeepEveryValueKeepTheLogits()
    {
        var prompt = Prompt(80);
        var f16 = Decode(Kv("f16"), prompt, 40, []);
        Assert.Equal(f16, Decode(Kv("f16"), prompt, 40, new() { [20] = Kv("f16") }));
        // 80 + 40 tokens stay inside KIVI's 128-token float16 window: nothing is quantized, the rows are the f16 ones.
        Assert.Equal(f16, Decode(Kv("f16"), prompt, 40, new() { [20] = Kv("kivi4") }));
        var f32 = Decode(Kv("f32"), prompt, 40, []);
        Assert.Equal(f32, Decode(Kv("f32"), prompt, 40, new() { [20] = Kv("f32") }));
    }

    /// <summary>Down the whole ladder and back up in one generation: every step keeps the positions and decoding goes on.</summary>
    [Fact]
    public void DecodingGoesOnDownAndUpTheLadder()
    {
        var prompt = Prompt(150);
        var plan = new Dictionary<int, KvCacheOptions>();
        var o = Kv("f32");
        for (int i = 5; KvLadder.Smaller(o) is { } smaller; i += 5) plan[i] = o = smaller;
        for (int i = 25; KvLadder.Larger(o) is { } larger; i += 5) plan[i] = o = larger;
        Assert.Equal(["f16", "kivi4", "kivi2", "kivi4", "f16", "f32"], plan.OrderBy(p => p.Key).Select(p => p.Value.Spec));
        var reference = Decode(Kv("f32"), prompt, 45, []);
        var changed = Decode(Kv("f32"), prompt, 45, plan, (tf, pos) => Assert.True(tf.Kv.Bytes > 0));
        int same = 0;
        for (int i = 0; i < 45; i++)
        {
            Assert.All(changed[i], x => Assert.True(float.IsFinite(x)));
            if (System.Numerics.Tensors.TensorPrimitives.IndexOfMax(changed[i]) == System.Numerics.Tensors.TensorPrimitives.IndexOfMax(reference[i])) same++;
        }
        Assert.Equal(reference.Take(5), changed.Take(5)); // before the first change
        output.WriteLine($"greedy choices equal to an f32 run: {same} of 45");
    }

    /// <summary>
    /// Stores the caller holds (the server's sequences) move with the model's own: converted in order, decoding on
    /// in one batch, and (a change that keeps every value) with the logits of sequences that never moved.
    /// </summary>
    [Fact]
    public void OtherStoresOfTheFactoryMoveToo()
    {
        int[][] prompts = [Prompt(40), Prompt(70)];
        float[] Run(KvCacheOptions? change)
        {
            using var lm = LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = 256, MaxBatch = 128, Kv = Kv("f16") });
            var tf = lm.Transformer;
            var stores = prompts.Select(_ => tf.KvStores.Create()).ToArray();
            tf.Forward(prompts.Select((p, s) => new SequenceSlice(stores[s], p, 0, WantLogits: false)).ToArray(), Span<float>.Empty);
            if (change != null)
            {
                stores = tf.ChangeKv(change, stores);
                Assert.Equal([40, 70], stores.Select(s => s.Length));
            }
            var logits = new float[2 * lm.Config.Vocab];
            tf.Forward(prompts.Select((p, s) => new SequenceSlice(stores[s], new[] { 5, 6, 7 }, p.Length, WantLogits: true)).ToArray(), logits);
            Assert.Equal([43, 73], stores.Select(s => s.Length));
            foreach (var s in stores) s.Dispose();
            return logits;
        }
        var unchanged = Run(null);
        Assert.Equal(unchanged, Run(Kv("f16")));
        Assert.Equal(unchanged, Run(Kv("kivi2")));
    }

    /// <summary>A type off the ladder is refused before anything changes: the model keeps its cache and decodes on.</summary>
    [Fact]
    public void AnUnsupportedChangeLeavesTheModelAsItWas()
    {
        using var lm = LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = 128, Kv = Kv("xquant4") });
        var tf = lm.Transformer;
        var logits = new float[lm.Config.Vocab];
        tf.Forward(Prompt(20), 0, logits, 19);
        var factory = tf.KvStores;
        var e = Assert.Throws<FitLMException>(() => tf.ChangeKv(Kv("kivi4")));
        Assert.Contains("only f32, f16, kivi4 and kivi2 stores can be converted", e.Message);
        e = Assert.Throws<FitLMException>(() => tf.ChangeKv(Kv("xquant2")));
        Assert.Contains("cannot convert to xquant2", e.Message);
        Assert.Same(factory, tf.KvStores);
        Assert.Equal(20, tf.Kv.Length);
        tf.Forward([5], 20, logits, 0);
    }

    /// <summary>
    /// A chat whose cache moved to KIVI between turns re-prefills instead of rewinding into quantized tokens
    /// (which KIVI cannot do), and reuses its cache again once back on f16.
    /// </summary>
    [Fact]
    public void ChatAfterAChangeReusesTheCacheOnlyWhereItCan()
    {
        using var lm = LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = 512, Kv = Kv("f16") });
        var session = new ChatSession(lm, ChatTemplate.ChatMl, "You write Python.");
        var greedy = new ChatReplyOptions { MaxTokens = 12, Sampling = SamplingOptions.Greedy };
        session.Send("def add(a, b):", greedy);
        lm.Transformer.ChangeKv(Kv("kivi2:r0"));
        ChatPrompt? prompt = null;
        Assert.NotEmpty(session.Send("def sub(a, b):", greedy, onPrompt: p => prompt = p).Text);
        Assert.Equal(0, prompt!.Reused);
        lm.Transformer.ChangeKv(Kv("f16"));
        session.Send("def mul(a, b):", greedy, onPrompt: p => prompt = p);
        Assert.True(prompt.Reused > 10, $"reused {prompt.Reused}");
    }
}
