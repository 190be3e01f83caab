using FitLM.Memory;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Tensors;
using FitLM.Weights;

namespace FitLM.Memory;

/// <summary>How a stacked (BitStack) file is loaded: the weight cap (--weights) and how matrices multiply.</summary>
public sealed record StackLoadOptions
{
    /// <summary>Most bytes of weights to load (embeddings, head and norms included); 0 = as many as the memory budget allows.</summary>
    public long WeightBytes { get; init; }
    /// <summary>Type matrices are re-materialized into; null = the direct sign × low-rank kernel.</summary>
    public GgmlType? CacheType { get; init; } = StackedWeights.DefaultCache;
    /// <summary>
    /// When false (the default) and the budget cannot hold the cache with at least one block per matrix, the
    /// planner falls back to the direct kernel, which needs no cache; when true the given choice stands.
    /// </summary>
    public bool CacheChosen { get; init; }
}

/// <summary>
/// Fits a stacked model to a budget: everything the process holds besides the blocks (runtime, KV cache,
/// activations, conventional weights, the materialized caches) is counted first, then the longest stack prefix
/// that fits the rest is loaded. Also resizes a running model when its budget changes.
/// </summary>
public static class StackPlanner
{
    /// <summary>Opens the stack of <paramref name="source"/> and loads what fits; returns the weights and the plan.</summary>
    public static (StackedWeights Weights, MemoryPlan Plan) Load(GgufSource source, LoadOptions options, int context)
    {
        var layout = StackLayout.Read(source);
        var plan = Plan(source, layout, options, context);
        var weights = StackedWeights.Open(source, layout, plan.Stack!.Entries, plan.Stack.CacheType);
        return (weights, plan);
    }

    /// <summary>
    /// What loading <paramref name="source"/> with <paramref name="options"/> would hold, without loading it: the
    /// longest prefix that fits, how it multiplies, and every part of the process's memory. <see cref="Load"/>
    /// loads exactly this plan, so `fitlm plan` reports the blocks `fitlm run` then loads (for the same runtime).
    /// Throws a <see cref="FitLMException"/> naming the smallest budget that works when none fits.
    /// </summary>
    public static MemoryPlan Plan(GgufSource source, StackLayout layout, LoadOptions options, int context)
    {
        var so = options.Stack ?? new StackLoadOptions();
        long budget = options.MemoryBudget > 0 ? options.MemoryBudget : SystemMemory.AvailableBytes();
        long runtime = (options.RuntimeBytes > 0 ? options.RuntimeBytes : RuntimeFootprint.Bytes(source)) + options.HostBytes;
        var c = source.Config;
        long kv = KvCache.KvStoreFactory.PlanBytes(c, options.Kv, context, 1, options.MaxBatch);
        long scratch = Footprint.ScratchBytes(c, context, options.MaxBatch) + 4L * c.Vocab * Math.Max(1, options.LogitRows);

        var cache = so.CacheType;
        int k = Fit(layout, budget, runtime + kv + scratch, cache, so.WeightBytes, out long need);
        if (k < layout.BaseEntries && cache != null && !so.CacheChosen)
        {
            // The caches do not fit beside the smallest whole model: the direct kernel needs none.
            int direct = Fit(layout, budget, runtime + kv + scratch, null, so.WeightBytes, out long needDirect);
            need = Math.Min(need, needDirect);
            if (direct > k)
            {
                cache = null;
                k = direct;
            }
        }
        if (so.WeightBytes > 0 && so.WeightBytes < layout.BytesAt(layout.BaseEntries))
            throw new FitLMException($"--weights {ProcessMemory.Format(so.WeightBytes)} is below the smallest whole model of {layout.Path}: " +
                $"{ProcessMemory.Format(layout.BytesAt(layout.BaseEntries))} ({layout.BytesAt(layout.BaseEntries):N0} bytes: embeddings, head, norms and one block per matrix)");
        if (k < layout.BaseEntries)
            throw new FitLMException($"a budget of {ProcessMemory.Format(budget)} cannot run {layout.Path} with context {context}: the smallest whole model " +
                $"(one block per matrix) needs {ProcessMemory.Format(need)} (runtime {ProcessMemory.Format(runtime)}, KV cache {ProcessMemory.Format(kv)} ({options.Kv}), " +
                $"activations {ProcessMemory.Format(scratch)}, weights {ProcessMemory.Format(layout.BytesAt(layout.BaseEntries))}); " +
                $"give --memory {SmallestBudgetMiB(need)}MiB or more, a smaller context or a smaller --kv type");
        return PlanOf(source, layout, k, cache, budget, context, runtime, kv, scratch);
    }

    /// <summary>A budget in whole MiB that holds <paramref name="need"/> bytes (what the error message suggests).</summary>
    public static long SmallestBudgetMiB(long need) => (need + (1 << 20) - 1) >> 20;

    /// <summary>
    /// The plan of <paramref name="plan"/>'s model after a resize to <paramref name="entries"/> stack positions (and,
    /// when the process's budget changed, a new <paramref name="budget"/>): same runtime, KV cache and activations.
    /// </summary>
    public static MemoryPlan Replan(MemoryPlan plan, GgufSource source, StackLayout layout, int entries, long budget)
    {
        var stack = plan.Stack ?? throw new ArgumentException("not the plan of a stacked model", nameof(plan));
        return PlanOf(source, layout, entries, stack.CacheType, budget, plan.Context, plan.RuntimeBytes, plan.KvBytes, plan.ScratchBytes);
    }

    /// <summary>
    /// The longest prefix for a budget: fixed costs + conventional weights + caches + blocks ≤ budget, and
    /// weights ≤ <paramref name="weightCap"/> when one is given. <paramref name="need"/> is what the smallest whole model needs.
    /// </summary>
    private static int Fit(StackLayout layout, long budget, long fixedBytes, Tensors.GgmlType? cache, long weightCap, out long need)
    {
        long cacheBytes = StackedWeights.CacheBytesFor(layout, cache);
        long overhead = fixedBytes + cacheBytes + TransientBytes(layout, cache);
        need = overhead + layout.BytesAt(layout.BaseEntries);
        int byMemory = layout.EntriesFor(budget - overhead);
        int k = byMemory;
        if (weightCap > 0) k = Math.Min(k, layout.EntriesFor(weightCap));
        return k;
    }

    /// <summary>
    /// Memory besides blocks and caches that multiplying and resizing need: re-materializing one matrix holds a
    /// second cache of it, its blocks' Vᵀ as floats and row buffers meanwhile; the direct kernel keeps Vᵀ as floats
    /// for every block it holds (counted here for all blocks, a bound) and per-thread scratch.
    /// </summary>
    public static long TransientBytes(StackLayout layout, GgmlType? cache)
    {
        int threads = Math.Max(1, MatMul.Threads);
        long rowBuffers = threads * 33L * 4 * layout.Matrices.Max(m => m.Cols);
        return cache is { } t
            ? layout.Matrices.Max(m => GgmlTypes.RowBytes(t, m.Cols) * m.Rows + 4L * m.Blocks * m.Rank * m.Cols) + rowBuffers
            : layout.Matrices.Sum(m => 4L * m.Blocks * m.Rank * m.Cols) + threads * 4L * layout.Matrices.Max(m => m.Rank * m.Cols);
    }

    private static MemoryPlan PlanOf(GgufSource source, StackLayout layout, int entries, GgmlType? cache, long budget, int context, long runtime, long kv, long scratch)
    {
        var stack = StackPlan.Of(layout, entries, cache);
        var stackTensors = new HashSet<string>(layout.Entries.SelectMany(e => new[] { e.Sign.Name, e.U.Name, e.V.Name }));
        var plans = new List<TensorPlan>();
        foreach (var t in source.Tensors)
            if (!stackTensors.Contains(t.Name)) plans.Add(new TensorPlan(t, Placement.Resident, TensorNames.LayerOf(t.Name)));
        foreach (var e in layout.Entries.Take(entries))
            foreach (var gt in new[] { e.Sign, e.U, e.V })
                plans.Add(new TensorPlan(new TensorDesc(gt.Name, gt.Shape, gt.Type, gt.ByteSize), Placement.Resident, TensorNames.LayerOf(gt.Name)));
        if (cache is { } ct)
        {
            var counts = layout.CountsAt(entries);
            foreach (var m in layout.Matrices.Where(m => counts[m.Index] > 0))
                plans.Add(new TensorPlan(new TensorDesc(m.Name + ".cache", [m.Cols, m.Rows], ct, GgmlTypes.RowBytes(ct, m.Cols) * m.Rows),
                    Placement.Resident, m.Layer));
        }
        return new MemoryPlan
        {
            BudgetBytes = budget,
            Context = context,
            Tensors = plans,
            Mode = StreamMode.Prefetch,
            RuntimeBytes = runtime,
            KvBytes = kv,
            ScratchBytes = scratch,
            StreamBufferBytes = 0,
            StreamedBytesPerToken = 0,
            Stack = stack,
        };
    }

    /// <summary>Room for the GC and compiled code to grow after a resize measured against the live RSS.</summary>
    private const long ResizeMargin = 24L << 20;

    /// <summary>
    /// The stack positions a running stacked model may hold under a new budget for the whole process: the weights that
    /// fit beside what the process holds now (measured RSS, less the blocks and caches it already has, plus a margin).
    /// Below <see cref="StackLayout.BaseEntries"/> when even the smallest whole model does not fit.
    /// </summary>
    public static int EntriesForBudget(StackedWeights w, long budgetBytes, out long others)
    {
        var layout = w.Layout ?? throw new FitLMException("an in-memory stack has no layout to resize by");
        others = Math.Max(0, ProcessMemory.RssBytes() - w.ResidentBytes) + ResizeMargin;
        return layout.EntriesFor(budgetBytes - others - w.CacheBytes);
    }

    /// <summary>Resizes a running stacked model to a new memory budget (<see cref="EntriesForBudget"/>); returns the weight bytes loaded.</summary>
    public static long ResizeToBudget(StackedWeights w, long budgetBytes)
    {
        int k = EntriesForBudget(w, budgetBytes, out long others);
        if (k < w.Layout!.BaseEntries)
            throw new FitLMException($"a budget of {ProcessMemory.Format(budgetBytes)} cannot hold the smallest whole model of {w.Layout.Path} besides what the process holds ({ProcessMemory.Format(others)})");
        w.ResizeEntries(k);
        return w.WeightBytes;
    }
}
