using FitLM.KvCache;
using FitLM.Model;
using Xunit;
using Xunit.Abstractions;
using FitLM.Memory;

namespace FitLM.Tests.KvCache;

/// <summary>Identity with the plain cache, page reuse, byte accounting, H2O against a reference simulation, the codec.</summary>
public class KvStoreBehaviourTests(ITestOutputHelper output)
{
    private const int G = KvCacheOptions.Group;

    /// <summary>
    /// With nothing evicted and nothing quantized, every store gives the plain cache's logits bit for bit:
    /// paged f32 against the unpaged attention the transformer used before stores existed (below), H2O with
    /// a budget above the context, KIVI with its window covering the context in float32, f16 with H2O vs f16.
    /// (XQuant always rematerializes through a rounded basis or the weights: see the accuracy tests.)
    /// </summary>
    [Fact]
    public void FullPrecisionStoresGiveIdenticalLogits()
    {
        var tokens = Tokens(200, 5);
        var reference = Logits(new KvCacheOptions(), tokens);
        Assert.Equal(reference, Logits(new KvCacheOptions { Evict = KvEviction.H2O, Keep = 512 }, tokens));
        Assert.Equal(reference, Logits(new KvCacheOptions { Type = KvType.Kivi2, Residual = 512, FullPrecisionResidual = true }, tokens));
        Assert.Equal(reference, Logits(new KvCacheOptions { Type = KvType.Kivi4, Residual = 256, FullPrecisionResidual = true }, tokens));
        var f16 = Logits(new KvCacheOptions { Type = KvType.F16 }, tokens);
        Assert.Equal(f16, Logits(new KvCacheOptions { Type = KvType.F16, Evict = KvEviction.H2O, Keep = 300, Sinks = 0 }, tokens));
        Assert.NotEqual(reference, f16);
    }

    /// <summary>Logits of a 160-token prompt (batches of 64), then 40 decoded tokens one at a time.</summary>
    private static float[] Logits(KvCacheOptions kv, int[] tokens)
    {
        using var lm = LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = 256, MaxBatch = 64, Kv = kv });
        int vocab = lm.Config.Vocab, prompt = 160;
        var all = new float[(tokens.Length - prompt + 1) * vocab];
        var first = new float[prompt * vocab];
        lm.Transformer.Forward(tokens.AsSpan(0, prompt), 0, first, 0);
        first.AsSpan((prompt - 1) * vocab, vocab).CopyTo(all);
        for (int p = prompt; p < tokens.Length; p++)
            lm.Transformer.Forward(tokens.AsSpan(p, 1), p, all.AsSpan((p - prompt + 1) * vocab, vocab), 0);
        return all;
    }

    private static int[] Tokens(int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => rng.Next(1, 8000)).ToArray();
    }

    /// <summary>The paged f32 store's attention equals the old contiguous float32 attention exactly.</summary>
    [Fact]
    public void PagedFloat32AttentionEqualsContiguousAttention()
    {
        var model = new TestKvModel(seed: 2);
        var c = model.Config;
        using var factory = new KvStoreFactory(model, new KvCacheOptions(), 256, 64);
        using var store = factory.Create();
        int n = 150, kvDim = c.KvDim, hd = c.HeadDim;
        var tokens = Enumerable.Range(0, n).Select(i => i % c.Vocab).ToArray();
        var rows = model.MakeRows(tokens, 1);
        var rng = new Random(1);
        for (int pos = 0; pos < n; pos += 50)
        {
            var r = rows[0];
            store.Append(0, pos, new KvRows(tokens.AsSpan(pos, 50), r.Residual.AsSpan(pos * c.Dim, 50 * c.Dim), r.X.AsSpan(pos * c.Dim, 50 * c.Dim),
                r.K.AsSpan(pos * kvDim, 50 * kvDim), r.V.AsSpan(pos * kvDim, 50 * kvDim)));
            var q = Enumerable.Range(0, 50 * c.QDim).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray();
            var got = new float[q.Length];
            store.Attend(0, pos, 50, q, got);
            // Attention over contiguous keys (no pages): the same score and accumulate kernels, SoftMax, in position order.
            var keys = (float[])r.K.Clone();
            var values = (float[])r.V.Clone();
            for (int t = 0; t < n; t++) { model.FinishKey(0, keys.AsSpan(t * kvDim, kvDim), t); model.FinishValue(0, values.AsSpan(t * kvDim, kvDim)); }
            for (int t = 0; t < 50; t++)
                for (int h = 0; h < c.Heads; h++)
                {
                    int len = pos + t + 1, kvh = h / (c.Heads / c.KvHeads);
                    var att = new float[len];
                    var qh = q.AsSpan(t * c.QDim + h * hd, hd);
                    for (int j = 0; j < len; j++)
                        att[j] = ReferenceScore(qh, keys.AsSpan(j * kvDim + kvh * hd, hd), 1f / MathF.Sqrt(hd));
                    System.Numerics.Tensors.TensorPrimitives.SoftMax(att, att);
                    var o = new float[hd];
                    for (int j = 0; j < len; j++)
                        ReferenceAccumulate(values.AsSpan(j * kvDim + kvh * hd, hd), att[j], o);
                    Assert.Equal(o, got.AsSpan(t * c.QDim + h * hd, hd).ToArray());
                }
        }
    }

    /// <summary>
    /// One score as every attention path computes it: <see cref="Tensors.AttentionKernels"/> where it runs (a key's
    /// score depends only on that key, so it is scored alone in a 16-row group), else a dot product.
    /// </summary>
    private static unsafe float ReferenceScore(ReadOnlySpan<float> q, ReadOnlySpan<float> key, float scale)
    {
        int hd = q.Length;
        if (!Tensors.AttentionKernels.VectorSupported(hd)) return System.Numerics.Tensors.TensorPrimitives.Dot(q, key) * scale;
        var group = new float[16 * hd];
        key.CopyTo(group);
        float* s = stackalloc float[16];
        fixed (float* pk = group, pq = q) Tensors.AttentionKernels.Scores(pk, hd, 16, pq, s, scale, vector: true);
        return s[0];
    }

    private static unsafe void ReferenceAccumulate(ReadOnlySpan<float> v, float w, Span<float> o)
    {
        if (!Tensors.AttentionKernels.VectorSupported(v.Length)) { System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(v, w, o, o); return; }
        fixed (float* pv = v, po = o) Tensors.AttentionKernels.AccumulateValues(pv, v.Length, &w, 0, 1, po, vector: true);
    }

    public static TheoryData<string> AllTypes => new() { "f32", "f16", "kivi2", "kivi4", "xquant4", "xquant3", "xquant2", "xquant-cl", "f16+h2o" };

    /// <summary>
    /// 1,000 short sequences over one pool, three alive at a time: the pool stops growing after the first
    /// round and every page comes back. The bytes a store reports match the static sizing.
    /// </summary>
    [Theory]
    [MemberData(nameof(AllTypes))]
    public void PagesAreReusedAcrossSequences(string type)
    {
        var model = new TestKvModel(seed: 4);
        var c = model.Config;
        var o = type == "f16+h2o" ? new KvCacheOptions { Type = KvType.F16, Evict = KvEviction.H2O, Keep = 40 }
            : new KvCacheOptions { Type = KvCacheOptions.ParseType(type) };
        using var factory = new KvStoreFactory(model, o, 128, 16);
        var rng = new Random(2);
        var tokens = Enumerable.Range(0, 100).Select(_ => rng.Next(c.Vocab)).ToArray();
        var rows = model.MakeRows(tokens, 3);
        var q = new float[16 * c.QDim];
        var outBuf = new float[16 * c.QDim];
        int reserved = -1;
        var alive = new Queue<IKvStore>();
        for (int s = 0; s < 1000; s++)
        {
            var store = factory.Create();
            int len = 20 + s % 50;
            for (int pos = 0; pos < len; pos += 16)
            {
                int n = Math.Min(16, len - pos);
                for (int l = 0; l < c.Layers; l++)
                {
                    var r = rows[l];
                    store.Append(l, pos, new KvRows(tokens.AsSpan(pos, n), r.Residual.AsSpan(pos * c.Dim, n * c.Dim), r.X.AsSpan(pos * c.Dim, n * c.Dim),
                        r.K.AsSpan(pos * c.KvDim, n * c.KvDim), r.V.AsSpan(pos * c.KvDim, n * c.KvDim)));
                    store.Attend(l, pos, n, q.AsSpan(0, n * c.QDim), outBuf);
                }
            }
            if (s == 0) Assert.Equal(KvStoreFactory.Bytes(c, o, len) - factory.FixedBytes, store.Bytes);
            alive.Enqueue(store);
            if (alive.Count == 3) alive.Dequeue().Dispose();
            int now = factory.Pool.PagesReserved + (factory.SecondPool?.PagesReserved ?? 0);
            if (s == 50) reserved = now;
            if (s > 50) Assert.Equal(reserved, now);
        }
        while (alive.Count > 0) alive.Dequeue().Dispose();
        Assert.Equal(0, factory.Pool.PagesInUse);
        Assert.Equal(0, factory.SecondPool?.PagesInUse ?? 0);
        output.WriteLine($"{type}: {reserved} pages reserved for 3 live sequences of up to 69 tokens");
    }

    [Fact]
    public void PoolTrimsFreeSlabsAndReusesPages()
    {
        using var pool = new KvPagePool(1000, slabBytes: 4096);
        Assert.Equal(1024, pool.PageBytes);
        var pages = Enumerable.Range(0, 10).Select(_ => pool.Rent()).ToList();
        Assert.Equal(10, pages.Distinct().Count());
        Assert.Equal(12, pool.PagesReserved);
        foreach (var p in pages) pool.Return(p);
        Assert.Equal(0, pool.PagesInUse);
        var again = Enumerable.Range(0, 10).Select(_ => pool.Rent()).ToHashSet();
        Assert.Subset(pages.ToHashSet(), again);
        foreach (var p in again) pool.Return(p);
        pool.Trim();
        Assert.Equal(0, pool.PagesReserved);
    }

    /// <summary>KV bytes per token: f16 is 2 bytes per element; the quantized types count scales, windows and bases.</summary>
    [Fact]
    public void BytesPerTokenOfEachType()
    {
        var c = new ModelConfig { Architecture = "llama", Dim = 512, Layers = 8, Heads = 8, KvHeads = 2, HeadDim = 64, FfnDim = 1280, Vocab = 8192, RopeDims = 64 };
        double B(KvCacheOptions o) => KvStoreFactory.BytesPerToken(c, o, 512);
        Assert.Equal(2 * 8 * 128 * 2, B(new KvCacheOptions { Type = KvType.F16 }));
        Assert.Equal(2 * 8 * 128 * 4, B(new KvCacheOptions { Type = KvType.F32 }));
        // KIVI-2 at 512 tokens: 384 quantized (2 bits + an f16 scale and min per 32 elements = 3 bits), 128 in f16.
        Assert.Equal((384 * 8 * 256 * 3 / 8.0 + 128 * 8 * 256 * 2) / 512, B(new KvCacheOptions { Type = KvType.Kivi2 }));
        // XQuant-4 on this GQA model: a 256-wide latent at 5 bits per element, plus the 256×256 f16 basis per layer.
        Assert.Equal((512 * 8 * 256 * 5 / 8.0 + 8 * 256 * 256 * 2) / 512, B(new KvCacheOptions { Type = KvType.XQuant4 }));
        // XQuant-CL (3 bits): a token id, and 7 layers of 512-wide deltas at 4 bits per element.
        Assert.Equal(4 + 7 * 512 * 4 / 8.0, B(new KvCacheOptions { Type = KvType.XQuantCl }));
        // H2O keeping 128 tokens of 512: a quarter of f16, plus 8 bytes per held token and KV head.
        Assert.Equal((128 * 8 * 256 * 2 + 128 * 8 * 2 * 8) / 512.0, B(new KvCacheOptions { Type = KvType.F16, Evict = KvEviction.H2O, Keep = 128 }));
    }

    /// <summary>H2O + sinks matches a direct simulation: decode one token at a time, softmax, accumulate, evict the lowest.</summary>
    [Theory]
    [InlineData(24, 4, 1)]
    [InlineData(40, 2, 16)]
    [InlineData(17, 0, 7)]
    public void H2OMatchesReferenceSimulation(int keep, int sinks, int batch)
    {
        var model = new TestKvModel(seed: 9, layers: 1);
        var c = model.Config;
        var o = new KvCacheOptions { Evict = KvEviction.H2O, Keep = keep, Sinks = sinks };
        using var factory = new KvStoreFactory(model, o, 128, 16);
        using var store = factory.Create();
        var h2o = (H2OKvStore)store;
        int n = 120, kvDim = c.KvDim, hd = c.HeadDim, group = c.Heads / c.KvHeads, recent = (keep - sinks) / 2;
        var rng = new Random(5);
        var tokens = Enumerable.Range(0, n).Select(_ => rng.Next(c.Vocab)).ToArray();
        var r = model.MakeRows(tokens, 8)[0];
        var keys = (float[])r.K.Clone();
        var values = (float[])r.V.Clone();
        for (int t = 0; t < n; t++) { model.FinishKey(0, keys.AsSpan(t * kvDim, kvDim), t); model.FinishValue(0, values.AsSpan(t * kvDim, kvDim)); }
        var q = Enumerable.Range(0, n * c.QDim).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        // Reference state per KV head: held positions and their scores.
        var held = Enumerable.Range(0, c.KvHeads).Select(_ => new List<int>()).ToArray();
        var score = Enumerable.Range(0, c.KvHeads).Select(_ => new Dictionary<int, double>()).ToArray();
        for (int pos = 0; pos < n; pos += batch)
        {
            int cnt = Math.Min(batch, n - pos);
            store.Append(0, pos, new KvRows(tokens.AsSpan(pos, cnt), r.Residual.AsSpan(pos * c.Dim, cnt * c.Dim), r.X.AsSpan(pos * c.Dim, cnt * c.Dim),
                r.K.AsSpan(pos * kvDim, cnt * kvDim), r.V.AsSpan(pos * kvDim, cnt * kvDim)));
            var got = new float[cnt * c.QDim];
            store.Attend(0, pos, cnt, q.AsSpan(pos * c.QDim, cnt * c.QDim), got);
            for (int t = 0; t < cnt; t++)
            {
                int qp = pos + t;
                for (int kvh = 0; kvh < c.KvHeads; kvh++)
                {
                    held[kvh].Add(qp);
                    score[kvh][qp] = 0;
                    for (int g = 0; g < group; g++)
                    {
                        int h = kvh * group + g;
                        var s = held[kvh].Select(j => (double)System.Numerics.Tensors.TensorPrimitives.Dot(q.AsSpan(qp * c.QDim + h * hd, hd), keys.AsSpan(j * kvDim + kvh * hd, hd)) / Math.Sqrt(hd)).ToArray();
                        double m = s.Max(), sum = s.Sum(x => Math.Exp(x - m));
                        var p = s.Select(x => Math.Exp(x - m) / sum).ToArray();
                        for (int d = 0; d < hd; d++)
                        {
                            double e = 0;
                            for (int i = 0; i < p.Length; i++) e += p[i] * values[held[kvh][i] * kvDim + kvh * hd + d];
                            Assert.True(Math.Abs(e - got[t * c.QDim + h * hd + d]) < 1e-4, $"position {qp} head {h}: {e} vs {got[t * c.QDim + h * hd + d]}");
                        }
                        for (int i = 0; i < p.Length; i++) score[kvh][held[kvh][i]] += p[i];
                    }
                    while (held[kvh].Count > keep)
                    {
                        var victims = held[kvh].Where(j => j >= sinks && j <= qp - recent).ToList();
                        if (victims.Count == 0) break;
                        int v = victims.MinBy(j => score[kvh][j]);
                        held[kvh].Remove(v);
                    }
                }
            }
            for (int kvh = 0; kvh < c.KvHeads; kvh++)
            {
                Assert.Equal(held[kvh].Count, h2o.Held(0, kvh));
                Assert.True(h2o.Held(0, kvh) <= keep);
                Assert.All(Enumerable.Range(0, Math.Min(sinks, pos + cnt)), s => Assert.Contains(s, held[kvh]));
            }
        }
    }

    /// <summary>The codec's error is at most half a step, scale and min in float16 rounded outward.</summary>
    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void GroupQuantErrorIsAtMostHalfAStep(int bits)
    {
        var rng = new Random(bits);
        var block = new byte[GroupQuant.BlockBytes(bits)];
        var back = new float[G];
        for (int trial = 0; trial < 2000; trial++)
        {
            int n = 1 + rng.Next(G);
            double spread = Math.Pow(10, rng.Next(-4, 3)), offset = (rng.NextDouble() - 0.5) * 8 * spread;
            var x = Enumerable.Range(0, n).Select(_ => (float)(offset + spread * (rng.NextDouble() - 0.5))).ToArray();
            if (trial % 10 == 0) x[rng.Next(n)] *= 20; // an outlier (values stay within float16 range, as scales and mins must)
            GroupQuant.Quantize(x, bits, block);
            GroupQuant.Dequantize(block, bits, back.AsSpan(0, n));
            float step = GroupQuant.Scale(block, bits);
            double range = x.Max() - x.Min();
            Assert.True(step <= (range + Math.Pow(2, -10) * Math.Abs(x.Min())) / ((1 << bits) - 1) * (1 + Math.Pow(2, -9)) + 6e-8);
            for (int i = 0; i < n; i++)
                Assert.True(Math.Abs(back[i] - x[i]) <= step / 2 + 1e-6 * (Math.Abs(x[i]) + range), $"{x[i]} → {back[i]} (step {step})");
        }
    }
}
