using FitLM.Compression;
using FitLM.Memory;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Tensors;
using FitLM.Weights;

namespace FitLM.Cli.Commands;

/// <summary>`fitlm plan` on a stacked (BitStack) file: how much of the stack a budget holds, and what the rest of the process takes.</summary>
internal static class StackPlanReport
{
    public static void Write(TextWriter o, GgufSource src, MemoryPlan plan, bool freeMemory, KvCache.KvCacheOptions kv)
    {
        var st = plan.Stack ?? throw new ArgumentException("not the plan of a stacked model", nameof(plan));
        o.WriteLine($"plan for {src.Path} (stacked, BitStack), budget {ProcessMemory.Format(plan.BudgetBytes)}{(freeMemory ? " (free memory)" : "")}, context {plan.Context}");
        o.WriteLine();
        o.WriteLine($"stack: {st.Entries}/{st.TotalEntries} blocks ({st.BlocksPerMatrix}), {st.BitsPerWeight:F2} bits per weight " +
            $"(stacked matrices {st.StackBitsPerWeight:F2}), {st.KernelText}");
        o.WriteLine();
        o.WriteLine($"  runtime (fixed, measured)   {ProcessMemory.Format(plan.RuntimeBytes),12}");
        o.WriteLine($"  weights                     {ProcessMemory.Format(st.WeightBytes),12}  ({st.WeightBytes:N0} bytes: embeddings, head, norms and {st.Entries} blocks)");
        o.WriteLine($"  matrix caches               {ProcessMemory.Format(st.CacheBytes),12}  ({(st.CacheType is { } t ? $"{GgmlTypes.Name(t)}, one per stacked matrix" : "none: the direct kernel multiplies the blocks")})");
        o.WriteLine($"  kernel and resize buffers   {ProcessMemory.Format(st.TransientBytes),12}");
        o.WriteLine($"  KV cache                    {ProcessMemory.Format(plan.KvBytes),12}  ({PlanCommand.KvText(src.Config, kv, plan.Context)})");
        o.WriteLine($"  activations and scratch     {ProcessMemory.Format(plan.ScratchBytes),12}");
        o.WriteLine($"  total                       {ProcessMemory.Format(plan.TotalBytes),12}  of {ProcessMemory.Format(plan.BudgetBytes)}");
        o.WriteLine();
        if (st.Entries < st.TotalEntries)
        {
            var layout = StackLayout.Read(src);
            // Beyond the smallest whole model the caches no longer grow, so more budget buys blocks byte for byte.
            long whole = plan.TotalBytes - st.WeightBytes + layout.BytesAt(layout.Entries.Count);
            o.WriteLine($"the next block needs {layout.Entries[st.Entries].Bytes:N0} bytes more; the whole stack ({st.TotalEntries} blocks) needs " +
                $"--memory {StackPlanner.SmallestBudgetMiB(whole)}MiB {(st.CacheType == null ? "with the direct kernel" : "with these caches")}");
        }
        else o.WriteLine("the whole stack fits");
        o.WriteLine($"weights multiplied per token: {ProcessMemory.Format(st.BytesPerToken)}; nothing is streamed");
        if (plan.PredictedTokensPerSecond > 0)
        {
            o.WriteLine();
            o.WriteLine($"predicted decode: {plan.PredictedTokensPerSecond:F2} tok/s — {plan.CostModelNote}");
        }
    }
}
