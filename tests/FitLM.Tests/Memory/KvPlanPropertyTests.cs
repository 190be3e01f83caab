using FitLM.KvCache;
using FitLM.Memory;
using FitLM.Tensors;
using FitLM.Tests.KvCache;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Memory;

/// <summary>
/// The plan's KV bytes are what the stores really allocate: for random small shapes, contexts, batches, budgets and
/// every KV type (H2O too), a real factory and store filled to the context hold exactly the pages, basis and
/// bookkeeping KvStoreFactory.PlanBytes counts, and the planner (and so the server's pool) counts that function.
/// Before issue 17 the planner counted float32 whatever the type, so every compressed type failed here.
/// </summary>
public sealed class KvPlanPropertyTests(ITestOutputHelper output)
{
    private static readonly GgmlType[] WeightTypes = [GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.F16];

    [Fact]
    public void PlanMatchesWhatAFilledStoreAllocates()
    {
        var rng = new Random(17);
        var kinds = KvCacheOptions.AllTypes.Select(t => (Type: t, H2O: false))
            .Concat([(KvType.F32, true), (KvType.F16, true)]).ToArray();
        int cases = 0;
        for (int round = 0; round < 3; round++)
            foreach (var (type, h2o) in kinds)
            {
                // A random small attention stack: 1-3 layers, GQA groups of 1-3, head widths of 32 or 64.
                int kvHeads = rng.Next(1, 3), group = rng.Next(1, 4), headDim = rng.Next(2) == 0 ? 32 : 64;
                int heads = kvHeads * group, dim = 32 * rng.Next(2, 9), layers = rng.Next(1, 4);
                int context = rng.Next(1, 200), maxBatch = rng.Next(1, 48);
                var o = new KvCacheOptions { Type = type };
                if (o.IsKivi && rng.Next(2) == 0) o = o with { Residual = 32 * rng.Next(0, 3) };
                if (h2o) o = o with { Evict = KvEviction.H2O, Keep = rng.Next(6, 120) };
                var model = new TestKvModel(seed: rng.Next(), maxPositions: context, dim: dim, layers: layers, heads: heads, kvHeads: kvHeads, headDim: headDim);
                var c = model.Config;
                int batch = Math.Min(maxBatch, context); // as the transformer clamps it

                using var factory = new KvStoreFactory(model, o, context, batch);
                long before = GC.GetAllocatedBytesForCurrentThread();
                using var store = factory.Create();
                long storeArrays = GC.GetAllocatedBytesForCurrentThread() - before;
                Fill(model, store, context, batch, rng.Next());

                string what = $"{o} shape L{layers} dim {dim} heads {heads}/{kvHeads}x{headDim}, context {context}, batch {batch}";
                long pools = factory.Pool.BytesInUse + (factory.SecondPool?.BytesInUse ?? 0);
                long pages = KvStoreFactory.PageBytesFor(c, o, context, batch);
                if (o.Evict == KvEviction.None)
                {
                    Assert.True(pages == store.Bytes, $"{what}: pages planned {pages}, store holds {store.Bytes}");
                    Assert.True(pools == store.Bytes, $"{what}: pools hand out {pools}, store reports {store.Bytes}");
                }
                else
                {
                    // H2O: the plan is the bound (pages up to its slot capacity, Keep + a batch); the slots held are exact.
                    Assert.True(store.Bytes <= pages, $"{what}: pages planned {pages}, store holds {store.Bytes}");
                    Assert.True(pools <= store.Bytes, $"{what}: pools hand out {pools}, more than the store reports {store.Bytes}");
                }
                Assert.Equal(factory.FixedBytes, KvStoreFactory.FixedBytesFor(c, o));
                // The store's own arrays: counted from its constructor's allocations (the store object itself, a few fields, is not).
                long planned = KvStoreFactory.StoreArrayBytes(c, o, context, batch);
                Assert.True(storeArrays >= planned && storeArrays <= planned + 512, $"{what}: store arrays planned {planned}, allocated {storeArrays}");
                // One sequence: the pages it rents and the arrays it allocated (H2O's slot bookkeeping lives in those arrays).
                long sequence = KvStoreFactory.SequenceBytes(c, o, context, batch), measured = pools + storeArrays;
                Assert.True((sequence <= measured || o.Evict == KvEviction.H2O) && sequence >= measured - 512, $"{what}: a sequence planned {sequence}, measured {measured}");
                // Shared scratch: the rematerialized layer, alternates and row buffers of XQuant are bounded by the plan.
                long shared = KvStoreFactory.SharedBytes(c, o, context, batch);
                long measuredShared = factory.FixedBytes + TileAttention.PartialBytes(c, context) + (factory.Workspace?.Bytes ?? 0);
                Assert.True(measuredShared <= shared, $"{what}: shared scratch {measuredShared} over the planned {shared}");

                // The planner counts that function: the plan's KV figure is the measured store plus the shared part.
                var source = new ShapeOnlySource(c, WeightTypes[rng.Next(WeightTypes.Length)], tied: rng.Next(2) == 0);
                long budget = (60L << 20) + rng.NextInt64(1L << 20, 1L << 30);
                var plan = Planner.Plan(source, new Planner.Options { BudgetBytes = budget, Context = context, MaxBatch = maxBatch, RuntimeBytes = 60L << 20, Kv = o });
                Assert.Equal(sequence + shared, plan.KvBytes);
                var two = Planner.Plan(source, new Planner.Options { BudgetBytes = budget, Context = context, MaxBatch = maxBatch, RuntimeBytes = 60L << 20, Kv = o, Sequences = 2 });
                Assert.Equal(plan.KvBytes + KvStoreFactory.SequenceBytes(c, o, context, batch), two.KvBytes);
                cases++;
            }
        output.WriteLine($"{cases} random cases agree");
    }

    [Fact]
    public void CompressedTypesCostLessThanFloat32InThePlan()
    {
        var model = new TestKvModel(seed: 3, maxPositions: 2048, dim: 256, layers: 4, heads: 8, kvHeads: 2, headDim: 32);
        var c = model.Config;
        var source = new ShapeOnlySource(c, GgmlType.Q8_0, tied: false);
        long Kv(KvType t) => Planner.Plan(source, new Planner.Options { BudgetBytes = 1L << 32, Context = 2048, RuntimeBytes = 60L << 20, Kv = new KvCacheOptions { Type = t } }).KvBytes;
        long f32 = Kv(KvType.F32), f16 = Kv(KvType.F16), kivi2 = Kv(KvType.Kivi2);
        Assert.True(f16 < f32 && kivi2 < f16, $"f32 {f32}, f16 {f16}, kivi2 {kivi2}");
    }

    /// <summary>Appends and attends every layer up to <paramref name="context"/> positions, in batches as prefill does.</summary>
    private static void Fill(TestKvModel model, IKvStore store, int context, int batch, int seed)
    {
        var c = model.Config;
        var rng = new Random(seed);
        var tokens = Enumerable.Range(0, context).Select(_ => rng.Next(c.Vocab)).ToArray();
        var rows = model.MakeRows(tokens, seed);
        var q = new float[batch * c.QDim];
        for (int i = 0; i < q.Length; i++) q[i] = (float)(rng.NextDouble() - 0.5);
        var outBuf = new float[batch * c.QDim];
        for (int pos = 0; pos < context; pos += batch)
        {
            int n = Math.Min(batch, context - pos);
            for (int l = 0; l < c.Layers; l++)
            {
                var r = rows[l];
                store.Append(l, pos, new KvRows(tokens.AsSpan(pos, n), r.Residual.AsSpan(pos * c.Dim, n * c.Dim), r.X.AsSpan(pos * c.Dim, n * c.Dim),
                    r.K.AsSpan(pos * c.KvDim, n * c.KvDim), r.V.AsSpan(pos * c.KvDim, n * c.KvDim)));
                store.Attend(l, pos, n, q.AsSpan(0, n * c.QDim), outBuf);
            }
        }
    }
}
