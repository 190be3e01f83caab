using FitLM.Model;
using FitLM.Runtime;
using FitLM.Weights;

namespace FitLM.Memory;

/// <summary>
/// The planner's branch for a mixture of experts that does not fit whole (docs/moe.md): every tensor but the
/// routed expert stacks stays resident (attention, norms, routers, shared experts, embedding, head) and each
/// layer holds <see cref="ExpertPlan.SlotsPerLayer"/> of its experts in an expert cache sized from what the
/// budget leaves (or --expert-cache). A token runs ExpertsUsed of ExpertCount experts a layer, so it reads at
/// most that many experts where streaming whole layers reads all of them: for Qwen3-30B-A3B 8 of 128.
/// </summary>
public static class ExpertPlanner
{
    /// <summary>
    /// One expert's gate, up and down bytes in each layer (the stacks' bytes over ExpertCount); the layers of a
    /// k-quant mix differ (Q4_K_M gives some layers' ffn_down_exps Q6_K).
    /// </summary>
    public static long[] ExpertBytesByLayer(IModelSource source)
    {
        var c = source.Config;
        var bytes = new long[c.Layers];
        if (!c.IsMoe) return bytes;
        foreach (var t in source.Tensors)
            if (TensorNames.IsExpertStack(t.Name) && TensorNames.LayerOf(t.Name) is var l && l >= 0 && l < c.Layers)
                bytes[l] += t.ByteSize / c.ExpertCount;
        return bytes;
    }

    /// <summary>
    /// What the expert readers hold besides the slots: for a GGUF file (read with direct I/O) each reader thread's
    /// page-aligned staging buffer for one expert's largest matrix.
    /// </summary>
    public static long ReaderBytes(IModelSource source)
    {
        if (source is not GgufSource || !source.Config.IsMoe) return 0;
        return ExpertReader.DefaultThreads * ExpertReader.BounceBytes(ExpertReader.LargestExpertMatrixBytes(source));
    }

    /// <summary>Bytes of all routed expert stacks.</summary>
    public static long StackBytes(IModelSource source) =>
        source.Tensors.Where(t => TensorNames.IsExpertStack(t.Name)).Sum(t => t.ByteSize);

    /// <summary>
    /// Whether the branch plans this model: a mixture of experts, not bundled (fitlm prepare), and either too big for
    /// the budget or asked for a cache (--expert-cache, or --expert-policy none or --stream naive, the baseline that
    /// reads every routed expert: LanguageModel loads these through the cache even where all experts fit). Whole
    /// layers of experts never stream: the experts a token runs are read, not every expert of a layer.
    /// </summary>
    internal static bool Applies(IModelSource source, Planner.Options o, bool fitsWhole, bool bundled) =>
        source.Config.IsMoe && o.ExpertCache && !bundled && StackBytes(source) > 0 &&
        (!fitsWhole || o.ExpertCacheBytes > 0 || o.ExpertPolicy == ExpertPolicy.None || o.StreamEverything);

    /// <summary>The policy a plan runs: naive streaming (--stream naive) of a mixture of experts is the no-cache baseline.</summary>
    internal static ExpertPolicy PolicyOf(Planner.Options o) => o.StreamEverything ? ExpertPolicy.None : o.ExpertPolicy;

    /// <summary>
    /// The expert cache under <paramref name="o"/>'s budget with <paramref name="otherBytes"/> held besides it (runtime,
    /// KV cache, scratch, every weight but the routed experts); null when the budget leaves fewer than ExpertsUsed
    /// experts a layer, <paramref name="minimumBytes"/> then being the smallest budget that holds them.
    /// An explicit <see cref="Planner.Options.ExpertCacheBytes"/> that does not fit is refused here.
    /// </summary>
    internal static ExpertPlan? Plan(IModelSource source, Planner.Options o, long otherBytes, out long minimumBytes)
    {
        var c = source.Config;
        var byLayer = ExpertBytesByLayer(source);
        // A slot holds any layer's expert: sized by the largest.
        long expertBytes = byLayer.Max();
        long oneExpertEveryLayer = byLayer.Sum();
        long slotRow = (long)c.Layers * expertBytes;
        minimumBytes = otherBytes + c.ExpertsUsed * slotRow;
        int slots;
        if (o.ExpertCacheBytes > 0)
        {
            slots = (int)Math.Min(c.ExpertCount, o.ExpertCacheBytes / slotRow);
            if (slots < c.ExpertsUsed)
                throw new FitLMException(
                    $"an expert cache of {ProcessMemory.Format(o.ExpertCacheBytes)} holds {slots} experts a layer, but a token runs {c.ExpertsUsed}: " +
                    $"give --expert-cache {MiB(c.ExpertsUsed * slotRow)}MiB or more (or 0 to size it from the budget)");
            long needed = otherBytes + slots * slotRow;
            if (needed > o.BudgetBytes)
                throw new BudgetTooSmallException(
                    $"a budget of {ProcessMemory.Format(o.BudgetBytes)} cannot hold an expert cache of {ProcessMemory.Format(slots * slotRow)} " +
                    $"beside the other weights, KV cache and runtime ({ProcessMemory.Format(otherBytes)}): give --memory {MiB(needed)}MiB or more, or a smaller --expert-cache",
                    needed);
        }
        else
        {
            long room = o.BudgetBytes - otherBytes;
            long fit = room < 0 ? 0 : room / slotRow;
            if (fit < c.ExpertsUsed) return null;
            slots = (int)Math.Min(c.ExpertCount, fit);
        }
        // No cache (the naive baseline) holds only what a token runs.
        var policy = PolicyOf(o);
        if (policy == ExpertPolicy.None) slots = c.ExpertsUsed;
        var (hit, note) = HitRate(policy, slots, c.ExpertCount);
        long read = (long)Math.Round((1 - hit) * c.ExpertsUsed * oneExpertEveryLayer);
        return new ExpertPlan(slots * slotRow, slots, expertBytes, policy, hit, note, read);
    }

    /// <summary>
    /// The share of routed experts the cache holds when a token asks, estimated for uniform, independent routing:
    /// whichever S of E experts a layer holds, a routed expert is one of them with probability S/E, for every policy
    /// that keeps S experts (LRU, frequency, prediction). Real routers favour some experts and consecutive tokens
    /// share experts, which raises it; the estimate is the floor a policy should beat, not a measurement.
    /// </summary>
    public static (double Rate, string Note) HitRate(ExpertPolicy policy, int slots, int experts)
    {
        if (policy == ExpertPolicy.None) return (0, "no cache (--expert-policy none): every routed expert is read when it runs");
        if (slots >= experts) return (1, "every expert fits the cache: only the first use of each is read");
        return (slots / (double)experts, $"uniform-routing estimate: {slots} of {experts} experts held; skewed routing does better");
    }

    /// <summary>
    /// The message for a budget neither the expert cache nor layer streaming fits, naming the expert cache's minimum
    /// (the smaller of the two; the caller checks).
    /// </summary>
    internal static string TooSmall(long budget, int context, long minimum, long runtime, long kv, long scratch, long otherWeights, long cacheBytes, int used, string kvType) =>
        $"a budget of {ProcessMemory.Format(budget)} cannot run this model with context {context}: the smallest plan needs {ProcessMemory.Format(minimum)} " +
        $"(runtime {ProcessMemory.Format(runtime)}, KV cache {ProcessMemory.Format(kv)} ({kvType}), activations {ProcessMemory.Format(scratch)}, " +
        $"weights but the routed experts {ProcessMemory.Format(otherWeights)}, an expert cache of {used} experts a layer {ProcessMemory.Format(cacheBytes)}); " +
        $"give --memory {MiB(minimum)}MiB or more, a smaller context or a smaller --kv type";

    private static long MiB(long bytes) => (long)Math.Ceiling(bytes / (double)(1 << 20));
}
