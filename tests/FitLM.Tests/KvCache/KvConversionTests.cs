using System.Diagnostics;
using FitLM.KvCache;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.KvCache;

/// <summary>
/// Converting a live KV store to another type between decode steps (KvStoreFactory.Convert): what it must
/// equal, how close the lossy steps stay, that decoding continues, that memory goes back, and what it refuses.
/// </summary>
public class KvConversionTests(ITestOutputHelper output)
{
    private const int G = KvCacheOptions.Group;

    private static KvCacheOptions Kv(string spec) => KvCacheOptions.Parse(spec);

    /// <summary>
    /// A cache converted from f32 or f16 to KIVI equals a KIVI cache filled from the start with the same rows, bit
    /// for bit, before and after decoding continues: KIVI quantizes its float16 window, which holds exactly what
    /// the f16 store holds (and what f32 rounds to). Same for f32 → f16 against a fresh f16 store.
    /// </summary>
    [Theory]
    [InlineData("f16", "kivi4:r32")]
    [InlineData("f32", "kivi4:r32")]
    [InlineData("f16", "kivi2")]
    [InlineData("f32", "f16")]
    [InlineData("f16", "f16")]
    public void ConversionEqualsAStoreOfTheTargetTypeFromTheStart(string from, string to)
    {
        var model = new TestKvModel(seed: 3);
        var run = new Run(model, 260);
        using var source = new KvStoreFactory(model, Kv(from), 512, 64);
        using var target = new KvStoreFactory(model, Kv(to), 512, 64);
        var converted = source.Create();
        using var fresh = target.Create();
        run.Fill(converted, 0, 200, 64);
        run.Fill(fresh, 0, 200, 64);
        converted = target.Convert(converted);
        using var _ = converted;
        Assert.Equal(200, converted.Length);
        Assert.Equal(0, source.Pool.PagesInUse);
        // Decoding goes on, one token at a time, then a batch: both see the same cache.
        Assert.Equal(run.Fill(fresh, 200, 40, 1), run.Fill(converted, 200, 40, 1));
        Assert.Equal(run.Fill(fresh, 240, 20, 20), run.Fill(converted, 240, 20, 20));
        Assert.Equal(260, converted.Length);
        Assert.Equal(fresh.Bytes, converted.Bytes);
    }

    /// <summary>
    /// kivi4 → kivi2 re-quantizes what kivi4 held: every key and value of the converted store is within half a
    /// 2-bit step of the kivi4 value it came from (the step of its group of kivi4 values), plus float16 rounding;
    /// the float16 window moves unchanged.
    /// </summary>
    [Fact]
    public void Kivi4ToKivi2StaysWithinHalfAStep()
    {
        var model = new TestKvModel(seed: 5);
        var c = model.Config;
        var run = new Run(model, 230);
        using var four = new KvStoreFactory(model, Kv("kivi4:r32"), 512, 64);
        using var two = new KvStoreFactory(model, Kv("kivi2:r32"), 512, 64);
        var store = four.Create();
        run.Fill(store, 0, 230, 64);
        var (k4, v4) = ReadAll(store, c);
        using var converted = two.Convert(store);
        var (k2, v2) = ReadAll(converted, c);
        int n = 230, kvDim = c.KvDim, quantized = KiviKvStore.QuantizedTiles(n, 32) * G;
        Assert.Equal(192, quantized);
        for (int l = 0; l < c.Layers; l++)
        {
            // Keys: a group is one channel over one 32-token tile.
            for (int t0 = 0; t0 < quantized; t0 += G)
                for (int ch = 0; ch < kvDim; ch++)
                    CheckGroup(k4[l], k2[l], Enumerable.Range(t0, G).Select(t => t * kvDim + ch).ToArray(), bits: 2);
            // Values: a group is 32 channels of one head of one token.
            for (int t = 0; t < quantized; t++)
                for (int g0 = 0; g0 < kvDim; g0 += G)
                    CheckGroup(v4[l], v2[l], Enumerable.Range(g0, G).Select(ch => t * kvDim + ch).ToArray(), bits: 2);
            // The window is the same float16 rows.
            Assert.Equal(k4[l].AsSpan(quantized * kvDim, (n - quantized) * kvDim).ToArray(), k2[l].AsSpan(quantized * kvDim, (n - quantized) * kvDim).ToArray());
            Assert.Equal(v4[l].AsSpan(quantized * kvDim, (n - quantized) * kvDim).ToArray(), v2[l].AsSpan(quantized * kvDim, (n - quantized) * kvDim).ToArray());
        }
    }

    /// <summary>
    /// Going back up (kivi2 → kivi4) keeps the positions as kivi2 left them: kivi2's four levels of a group fall
    /// on kivi4's grid, so each value moves by at most 1% of a kivi2 step, plus float16 rounding of the value.
    /// </summary>
    [Fact]
    public void Kivi2ToKivi4KeepsTheValues()
    {
        var model = new TestKvModel(seed: 6);
        var c = model.Config;
        var run = new Run(model, 200);
        using var two = new KvStoreFactory(model, Kv("kivi2:r32"), 512, 64);
        using var four = new KvStoreFactory(model, Kv("kivi4:r32"), 512, 64);
        var store = two.Create();
        run.Fill(store, 0, 200, 64);
        var (k2, v2) = ReadAll(store, c);
        using var converted = four.Convert(store);
        var (k4, v4) = ReadAll(converted, c);
        int kvDim = c.KvDim, quantized = KiviKvStore.QuantizedTiles(200, 32) * G;
        double worst = 0;
        for (int l = 0; l < c.Layers; l++)
        {
            for (int t0 = 0; t0 < quantized; t0 += G)
                for (int ch = 0; ch < kvDim; ch++)
                    worst = Math.Max(worst, CheckGroup(k2[l], k4[l], Enumerable.Range(t0, G).Select(t => t * kvDim + ch).ToArray(), bits: 2, fraction: 0.01));
            for (int t = 0; t < quantized; t++)
                for (int g0 = 0; g0 < kvDim; g0 += G)
                    worst = Math.Max(worst, CheckGroup(v2[l], v4[l], Enumerable.Range(g0, G).Select(ch => t * kvDim + ch).ToArray(), bits: 2, fraction: 0.01));
        }
        output.WriteLine($"kivi2 → kivi4: largest move {worst:P2} of a kivi2 step");
    }

    /// <summary>
    /// |after - before| ≤ fraction × step + float16 rounding for every element of a group, where step is the
    /// group's range of "before" values over 2^bits - 1 levels. Returns the largest move as a fraction of the step.
    /// </summary>
    private static double CheckGroup(float[] before, float[] after, int[] index, int bits, double fraction = 0.5)
    {
        float lo = index.Min(i => before[i]), hi = index.Max(i => before[i]);
        double step = (hi - lo) / ((1 << bits) - 1);
        double magnitude = Math.Max(Math.Abs(lo), Math.Abs(hi));
        double worst = 0;
        foreach (int i in index)
        {
            double d = Math.Abs(after[i] - before[i]);
            // Scale and min are float16 (min rounded down, scale up: 2^-10 relative each), values pass a float16 window.
            Assert.True(d <= fraction * step * 1.002 + magnitude * 2e-3 + 1e-6, $"moved {d} with a step of {step} (group {lo}..{hi})");
            if (step > 0) worst = Math.Max(worst, d / step);
        }
        return worst;
    }

    /// <summary>Every key and value a store holds, as the next query would read them: [layer] → [position × KvDim].</summary>
    private static (float[][] Keys, float[][] Values) ReadAll(IKvStore store, KvShape c)
    {
        var tiles = (IKvTiles)store;
        int n = store.Length, hd = c.HeadDim, kvDim = c.KvDim;
        var keys = new float[c.Layers][];
        var values = new float[c.Layers][];
        var scratch = new float[G * hd];
        for (int l = 0; l < c.Layers; l++)
        {
            keys[l] = new float[n * kvDim];
            values[l] = new float[n * kvDim];
            for (int tile = 0; tile * G < n; tile++)
                for (int h = 0; h < c.KvHeads; h++)
                {
                    var k = tiles.Keys(l, tile, h, n - 1, scratch, out bool channelMajor);
                    for (int j = 0; j < G && tile * G + j < n; j++)
                        for (int d = 0; d < hd; d++)
                            keys[l][(tile * G + j) * kvDim + h * hd + d] = channelMajor ? k[d * G + j] : k[j * hd + d];
                    var v = tiles.Values(l, tile, h, n - 1, scratch);
                    for (int j = 0; j < G && tile * G + j < n; j++)
                        v.Slice(j * hd, hd).CopyTo(values[l].AsSpan((tile * G + j) * kvDim + h * hd, hd));
                }
        }
        return (keys, values);
    }

    /// <summary>
    /// Converting one of two sequences of a shared pool gives its slabs back at once, although they are not at the
    /// end of the pool (the first sequence filled first): the old pool keeps only what the other sequence holds.
    /// </summary>
    [Fact]
    public void ConversionGivesTheOldPagesBack()
    {
        // Large enough rows that a sequence spans several 1 MiB slabs: 8 layers × 13 pages of 32 KiB in f16.
        var model = new TestKvModel(seed: 7, dim: 64, layers: 8, heads: 8, kvHeads: 4, headDim: 64);
        var run = new Run(model, 400);
        using var old = new KvStoreFactory(model, Kv("f16"), 512, 64);
        using var next = new KvStoreFactory(model, Kv("kivi2:r32"), 512, 64);
        var first = old.Create();
        var second = old.Create();
        run.Fill(first, 0, 400, 64);
        run.Fill(second, 0, 400, 64);
        long before = old.Pool.BytesReserved, secondBytes = second.Bytes;
        using var converted = next.Convert(first);
        long slab = (long)old.Pool.PagesPerSlab * old.Pool.PageBytes;
        output.WriteLine($"f16 pool: {before} bytes for two sequences, {old.Pool.BytesReserved} after converting one " +
            $"(the other holds {secondBytes}); kivi2 pools: {next.Pool.BytesReserved + next.SecondPool!.BytesReserved}");
        Assert.True(old.Pool.BytesReserved <= secondBytes + slab, $"{old.Pool.BytesReserved} bytes still reserved");
        Assert.True(next.Pool.BytesReserved + next.SecondPool.BytesReserved < before / 2);
        second.Dispose();
        old.Pool.Trim();
        Assert.Equal(0, old.Pool.BytesReserved);
    }

    /// <summary>Trim frees a slab whose pages are all free wherever it lies, and growth reuses its slot.</summary>
    [Fact]
    public void PoolTrimFreesEmptySlabsInTheMiddle()
    {
        using var pool = new KvPagePool(1024, slabBytes: 4096);
        var pages = Enumerable.Range(0, 12).Select(_ => pool.Rent()).ToList();
        Assert.Equal(12, pool.PagesReserved);
        foreach (var p in pages.Where(p => p / pool.PagesPerSlab == 0)) pool.Return(p);
        pool.Trim();
        Assert.Equal(8, pool.PagesReserved);
        var again = Enumerable.Range(0, 4).Select(_ => pool.Rent()).ToList();
        Assert.Equal(12, pool.PagesReserved);
        Assert.All(again, p => Assert.Equal(0, p / pool.PagesPerSlab));
        pool.PageSpan(again[0])[0] = 1; // the reused slot has memory again
    }

    /// <summary>XQuant and H2O are off the ladder: converting from or to them is refused, and the store is left as it was.</summary>
    [Theory]
    [InlineData("xquant4", "f16", "only f32, f16, kivi4 and kivi2 stores can be converted")]
    [InlineData("xquant-cl", "kivi2", "only f32, f16, kivi4 and kivi2 stores can be converted")]
    [InlineData("h2o", "kivi4", "cannot convert an H2O (evicting) store")]
    [InlineData("f16", "xquant4", "cannot convert to xquant4")]
    [InlineData("f16", "h2o", "cannot convert to f16 + h2o")]
    public void UnsupportedConversionsAreRefused(string from, string to, string message)
    {
        KvCacheOptions Options(string s) => s == "h2o" ? new KvCacheOptions { Type = KvType.F16, Evict = KvEviction.H2O, Keep = 64 } : Kv(s);
        var model = new TestKvModel(seed: 8);
        var run = new Run(model, 101);
        using var source = new KvStoreFactory(model, Options(from), 512, 64);
        using var target = new KvStoreFactory(model, Options(to), 512, 64);
        using var store = source.Create();
        run.Fill(store, 0, 100, 64);
        long bytes = store.Bytes;
        var e = Assert.Throws<FitLMException>(() => target.Convert(store));
        Assert.Contains(message, e.Message);
        Assert.Equal(100, store.Length);
        Assert.Equal(bytes, store.Bytes);
        run.Fill(store, 100, 1, 1);
    }

    /// <summary>
    /// What a conversion costs on a llama-0.8b-shaped cache (16 layers, 4 KV heads of 64) of 400 tokens: each
    /// ladder step, printed (no timing is asserted). Measured here (2 cores): see the test output.
    /// </summary>
    [Fact]
    public void LadderStepsOnALlama08bShapedCache()
    {
        var model = new TestKvModel(seed: 9, dim: 64, layers: 16, heads: 32, kvHeads: 4, headDim: 64);
        var c = model.Config;
        var rng = new Random(1);
        var keys = Enumerable.Range(0, 400 * c.KvDim).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var values = Enumerable.Range(0, 400 * c.KvDim).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var ladder = new[] { "f32", "f16", "kivi4", "kivi2", "kivi4", "f16" };
        var factories = ladder.Select(s => new KvStoreFactory(model, Kv(s), 512, 64)).ToArray();
        // The fastest of 5 runs down and up the ladder: the machine is shared, single runs vary 5×.
        var best = Enumerable.Repeat(double.MaxValue, ladder.Length).ToArray();
        var bytes = new long[ladder.Length];
        try
        {
            for (int trial = 0; trial < 5; trial++)
            {
                var store = factories[0].Create();
                var layers = (IKvLayers)store;
                for (int l = 0; l < c.Layers; l++)
                {
                    layers.BeginLayer(l, 400);
                    for (int t = 0; t * G < 400; t++)
                        layers.WriteTile(l, t, keys.AsSpan(t * G * c.KvDim), values.AsSpan(t * G * c.KvDim), Math.Min(G, 400 - t * G), new float[layers.ScratchFloats]);
                    layers.EndLayer(l);
                }
                bytes[0] = store.Bytes;
                for (int i = 1; i < ladder.Length; i++)
                {
                    var clock = Stopwatch.StartNew();
                    store = factories[i].Convert(store);
                    best[i] = Math.Min(best[i], clock.Elapsed.TotalMilliseconds);
                    Assert.Equal(400, store.Length);
                    bytes[i] = store.Bytes;
                }
                store.Dispose();
            }
            for (int i = 1; i < ladder.Length; i++)
                output.WriteLine($"{ladder[i - 1],-5} → {ladder[i],-5}: {best[i],6:F1} ms, {bytes[i - 1] / 1024.0:F0} → {bytes[i] / 1024.0:F0} KiB");
        }
        finally
        {
            foreach (var f in factories) f.Dispose();
        }
    }

    /// <summary>The ladder: f32 → f16 → kivi4 → kivi2 and back, no higher than where the model started; nothing off it.</summary>
    [Fact]
    public void LadderSteps()
    {
        string? Spec(KvCacheOptions? o) => o?.Spec;
        Assert.Equal("f16", Spec(KvLadder.Smaller(Kv("f32"))));
        Assert.Equal("kivi4", Spec(KvLadder.Smaller(Kv("f16"))));
        Assert.Equal("kivi2:r32", Spec(KvLadder.Smaller(Kv("kivi4:r32"))));
        Assert.Null(KvLadder.Smaller(Kv("kivi2")));
        Assert.Null(KvLadder.Smaller(Kv("xquant4")));
        Assert.Null(KvLadder.Smaller(new KvCacheOptions { Type = KvType.F16, Evict = KvEviction.H2O, Keep = 64 }));
        Assert.Equal("kivi4", Spec(KvLadder.Larger(Kv("kivi2"))));
        Assert.Equal("f16", Spec(KvLadder.Larger(Kv("kivi4"))));
        Assert.Equal("f32", Spec(KvLadder.Larger(Kv("f16"))));
        Assert.Null(KvLadder.Larger(Kv("f32")));
        Assert.Null(KvLadder.Larger(Kv("f16"), top: Kv("f16")));
        Assert.Equal("f16", Spec(KvLadder.Larger(Kv("kivi4"), top: Kv("f16"))));
        Assert.Null(KvLadder.Larger(Kv("kivi4"), top: Kv("kivi4")));
        Assert.Null(KvLadder.Larger(Kv("xquant2")));
    }

    /// <summary>Rows of a random token sequence for every layer, appended in batches with attention after each layer, as the transformer does.</summary>
    private sealed class Run
    {
        private readonly TestKvModel _model;
        private readonly int[] _tokens;
        private readonly (float[] Residual, float[] X, float[] K, float[] V)[] _rows;
        private readonly float[] _q;

        public Run(TestKvModel model, int n)
        {
            _model = model;
            var c = model.Config;
            var rng = new Random(n);
            _tokens = Enumerable.Range(0, n).Select(_ => rng.Next(c.Vocab)).ToArray();
            _rows = model.MakeRows(_tokens, 11);
            _q = Enumerable.Range(0, n * c.QDim).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        }

        /// <summary>Appends positions [pos, pos + n) in batches; returns every attention output.</summary>
        public float[] Fill(IKvStore store, int pos, int n, int batch)
        {
            var c = _model.Config;
            var outputs = new float[n * c.Layers * c.QDim];
            for (int p = pos; p < pos + n; p += batch)
            {
                int m = Math.Min(batch, pos + n - p);
                for (int l = 0; l < c.Layers; l++)
                {
                    var r = _rows[l];
                    store.Append(l, p, new KvRows(_tokens.AsSpan(p, m), r.Residual.AsSpan(p * c.Dim, m * c.Dim), r.X.AsSpan(p * c.Dim, m * c.Dim),
                        r.K.AsSpan(p * c.KvDim, m * c.KvDim), r.V.AsSpan(p * c.KvDim, m * c.KvDim)));
                    var o = new float[m * c.QDim];
                    store.Attend(l, p, m, _q.AsSpan(p * c.QDim, m * c.QDim), o);
                    for (int t = 0; t < m; t++)
                        o.AsSpan(t * c.QDim, c.QDim).CopyTo(outputs.AsSpan(((p - pos + t) * c.Layers + l) * c.QDim));
                }
            }
            return outputs;
        }
    }
}
