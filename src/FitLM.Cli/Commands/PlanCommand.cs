using System.CommandLine;
using FitLM.Compression;
using FitLM.KvCache;
using FitLM.Memory;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Storage;
using FitLM.Tensors;
using FitLM.Weights;

namespace FitLM.Cli.Commands;

/// <summary>`fitlm plan`: how a model would fit a budget — what is resident, what is streamed, what it costs.</summary>
internal static class PlanCommand
{
    public static Command Create()
    {
        var group = new ModelLoadOptions(); // the flags run and the server load with, so the same flags give the same plan
        var json = new Option<bool>("--json") { Description = "print the plan as JSON" };
        var noProbe = new Option<bool>("--no-probe") { Description = "skip the storage probe (no speed prediction)" };
        var cmd = new Command("plan", "show how a model fits a memory budget (resident vs streamed weights, KV, predicted speed)") { json, noProbe };
        group.AddTo(cmd);
        cmd.SetAction(r => Common.Guard(ct =>
        {
            string path = group.ModelPath(r);
            var load = group.Read(r);
            if (load.Device == ComputeDevice.Cuda) return GpuPlan.Write(Console.Out, path, load, r.GetValue(json));
            group.EnsureStackFlagsApply(r, path);
            // auto, as run loads it: the GPU's placement where the GPU would take the model, else the CPU's, saying why.
            if (load.Device == ComputeDevice.Auto)
            {
                if (GpuPlan.TryWrite(Console.Out, path, load, r.GetValue(json)) is not { } why) return 0;
                Console.Error.WriteLine($"device: cpu ({why})");
            }
            using var src = ModelSource.Open(path);
            int n = load.ContextLength > 0 ? load.ContextLength : LoadOptions.DefaultContext(src.Config.ContextLength); // as run loads it
            ModelLoadOptions.WarnPastTrainedContext(n, src.Config.ContextLength);
            if (src is GgufSource gguf && StackLayout.IsStacked(gguf.File))
            {
                // A stacked file streams nothing: the plan is how much of its stack fits, exactly as run loads it.
                var layout = StackLayout.Read(gguf);
                var stackPlan = StackPlanner.Plan(gguf, layout, load, n);
                if (!r.GetValue(noProbe)) stackPlan = StackCostModel.Predict(stackPlan, gguf, layout, ct);
                if (r.GetValue(json)) WriteJson(stackPlan, src.Config, load.Kv);
                else StackPlanReport.Write(Console.Out, gguf, stackPlan, load.MemoryBudget == 0, load.Kv);
                return 0;
            }
            StorageProfile? storage = null;
            var plan = LanguageModel.PlanLoad(path, src, load, n).Plan;
            long probeRoom = StorageProbe.RoomWithin(plan.BudgetBytes); // the probes' buffers stay within the budget too
            if (!r.GetValue(noProbe) && probeRoom < StorageProbe.MinBufferBytes)
                Console.Error.WriteLine($"no speed prediction: the storage probe needs {ProcessMemory.Format(StorageProbe.MinBufferBytes)} beside the runtime, more than the budget leaves");
            else if (!r.GetValue(noProbe))
            {
                // Probe where this plan streams (its largest file's streamed span), then price the plan with it.
                if (Located(() => StreamedRegion(src, plan)) is var (file, region))
                {
                    storage = StorageProbe.Measure(file, ct: ct, region: region, unitBytes: plan.StreamBufferBytes / 2, maxBufferBytes: probeRoom);
                    plan = LanguageModel.PlanLoad(path, src, load, n, storage).Plan;
                }
            }
            if (r.GetValue(json))
            {
                WriteJson(plan, src.Config, load.Kv);
                return 0;
            }

            var o = Console.Out;
            o.WriteLine($"plan for {src.Path}, budget {ProcessMemory.Format(plan.BudgetBytes)}{(load.MemoryBudget == 0 ? " (free memory)" : "")}, context {plan.Context}{(plan.Context < n ? " (the most this budget holds)" : "")}, {plan.Mode.ToString().ToLowerInvariant()} streaming");
            o.WriteLine();
            o.WriteLine($"{"unit",-12} {"placement",-16} {"tensors",7} {"bytes",12}");
            foreach (var g in plan.Tensors.GroupBy(t => t.Layer >= 0 ? $"layer {t.Layer}" : t.Tensor.Name.Replace(".weight", "")))
            {
                // Norms and biases are always resident; a unit's placement is that of its matrices.
                var matrices = g.Where(t => t.Tensor.Shape.Length >= 2).ToList();
                if (matrices.Count == 0) continue;
                var placements = matrices.Select(t => t.Placement).Distinct().Order().ToList();
                // A mixture's layer under an expert cache: resident attention and router, routed experts in the cache.
                string placement = placements.Count == 1 ? placements[0].ToString().ToLowerInvariant()
                    : placements.Contains(Placement.Experts) ? string.Join("+", placements.Select(p => p.ToString().ToLowerInvariant())) : "mixed";
                o.WriteLine($"{g.Key,-12} {placement,-16} {g.Count(),7} {ProcessMemory.Format(g.Sum(t => t.Tensor.ByteSize)),12}");
            }
            o.WriteLine();
            o.WriteLine($"  runtime (fixed, measured)   {ProcessMemory.Format(plan.RuntimeBytes),12}");
            o.WriteLine($"  resident weights            {ProcessMemory.Format(plan.ResidentWeightBytes),12}");
            if (plan.AdapterBytes > 0) o.WriteLine($"  LoRA adapters (--lora)      {ProcessMemory.Format(plan.AdapterBytes),12}");
            if (plan.Experts is { } cache) o.WriteLine($"  expert cache                {ProcessMemory.Format(cache.CacheBytes),12}  ({cache.SlotsPerLayer} of {src.Config.ExpertCount} experts a layer)");
            o.WriteLine($"  stream buffers              {ProcessMemory.Format(plan.StreamBufferBytes),12}");
            o.WriteLine($"  KV cache                    {ProcessMemory.Format(plan.KvBytes),12}  ({KvText(src.Config, load.Kv, plan.Context)})");
            o.WriteLine($"  activations and scratch     {ProcessMemory.Format(plan.ScratchBytes),12}");
            o.WriteLine($"  total                       {ProcessMemory.Format(plan.TotalBytes),12}  of {ProcessMemory.Format(plan.BudgetBytes)}");
            o.WriteLine();
            o.WriteLine($"streamed weights: {ProcessMemory.Format(plan.StreamedWeightBytes)}; read from storage per token: {ProcessMemory.Format(plan.StreamedBytesPerToken)}");
            if (plan.Experts is { } experts) ExpertPlanReport.Write(o, experts, src.Config);
            if (storage != null)
            {
                o.WriteLine();
                o.WriteLine(StorageProbe.Describe(storage));
                o.WriteLine();
                o.WriteLine($"predicted decode: {plan.PredictedTokensPerSecond:F2} tok/s — {plan.CostModelNote}");
                if (plan.Streams)
                {
                    // The plan is run's (run does not probe); the other mode's prediction is advice.
                    var other = plan.Mode == StreamMode.Naive ? StreamMode.Prefetch : StreamMode.Naive;
                    var alt = LanguageModel.PlanLoad(path, src, load with { Stream = other }, n, storage).Plan;
                    o.WriteLine($"mode: {plan.Mode.ToString().ToLowerInvariant()}; {other.ToString().ToLowerInvariant()} is predicted at {alt.PredictedTokensPerSecond:F2} tok/s" +
                        (alt.PredictedTokensPerSecond > plan.PredictedTokensPerSecond ? $" (faster: --stream {other.ToString().ToLowerInvariant()} chooses it)" : ""));
                }
            }
            return 0;
        }));
        return cmd;
    }

    /// <summary>
    /// Where to probe, or null with the reason on stderr: a Hugging Face folder stores experts one tensor each, which
    /// cannot be read as one stack (run converts it to GGUF first), so there is nothing to price.
    /// </summary>
    private static (string File, (long Offset, long Length)? Region)? Located(Func<(string, (long, long)?)> where)
    {
        try { return where(); }
        catch (FitLMException e)
        {
            Console.Error.WriteLine($"no speed prediction: {e.Message}");
            return null;
        }
    }

    /// <summary>The file holding most streamed bytes and the span [first, last byte) of its streamed tensors (none: the largest tensor's file, whole).</summary>
    private static (string File, (long Offset, long Length)? Region) StreamedRegion(IModelSource src, Memory.MemoryPlan plan)
    {
        // An expert cache reads its misses from the expert stacks: probe there.
        var streamed = plan.Tensors.Where(t => t.Placement is Placement.Streamed or Placement.Experts)
            .Select(t => (Location: src.Locate(t.Tensor), Bytes: t.Tensor.ByteSize)).ToList();
        if (streamed.Count == 0) return (src.Locate(src.Tensors.MaxBy(t => t.ByteSize)!).File, null);
        var inFile = streamed.GroupBy(l => l.Location.File).MaxBy(g => g.Sum(l => l.Bytes))!;
        long first = inFile.Min(l => l.Location.Offset), end = inFile.Max(l => l.Location.Offset + l.Bytes);
        return (inFile.Key, (first, end - first));
    }

    /// <summary>The KV line's note: the type and its bytes per token at the plan's context ("kivi2 (R=128), 30.1 bytes per token").</summary>
    internal static string KvText(ModelConfig c, KvCacheOptions kv, int context) =>
        $"{kv}, {KvBytesPerToken(c, kv, context):F1} bytes per token";

    /// <summary>What one more token of context costs a sequence's cache in this type, averaged over the plan's context.</summary>
    internal static double KvBytesPerToken(ModelConfig c, KvCacheOptions kv, int context) =>
        KvStoreFactory.PageBytesFor(c, kv, context) / (double)Math.Max(1, context);

    private static void WriteJson(MemoryPlan plan, ModelConfig c, KvCacheOptions kv)
    {
        var fields = new Dictionary<string, object?>
        {
            ["budget_bytes"] = plan.BudgetBytes,
            ["context"] = plan.Context,
            ["mode"] = plan.Mode.ToString().ToLowerInvariant(),
            ["total_bytes"] = plan.TotalBytes,
            ["runtime_bytes"] = plan.RuntimeBytes,
            ["kv_bytes"] = plan.KvBytes,
            ["kv_type"] = kv.Spec,
            ["kv_evict"] = kv.Evict == KvEviction.H2O ? "h2o" : "none",
            ["kv_bytes_per_token"] = KvBytesPerToken(c, kv, plan.Context),
            ["scratch_bytes"] = plan.ScratchBytes,
            ["stream_buffer_bytes"] = plan.StreamBufferBytes,
            ["resident_weight_bytes"] = plan.ResidentWeightBytes,
            ["streamed_weight_bytes"] = plan.StreamedWeightBytes,
            ["streamed_bytes_per_token"] = plan.StreamedBytesPerToken,
            ["predicted_tokens_per_second"] = plan.PredictedTokensPerSecond,
            ["tensors"] = plan.Tensors.Select(t => new PlanTensorJson(t.Tensor.Name, t.Tensor.ByteSize, t.Placement.ToString().ToLowerInvariant())).ToArray(),
        };
        if (plan.Experts is { } ex) fields["experts"] = ExpertPlanReport.Json(ex, c);
        if (plan.Stack is { } st)
            fields["stack"] = new Dictionary<string, object?>
            {
                ["blocks"] = st.Entries,
                ["total_blocks"] = st.TotalEntries,
                ["min_blocks_per_matrix"] = st.MinBlocks,
                ["max_blocks_per_matrix"] = st.MaxBlocks,
                ["bits_per_weight"] = st.BitsPerWeight,
                ["stack_bits_per_weight"] = st.StackBitsPerWeight,
                ["weight_bytes"] = st.WeightBytes,
                ["cache_type"] = st.CacheType is { } t ? GgmlTypes.Name(t) : "none",
                ["cache_bytes"] = st.CacheBytes,
                ["transient_bytes"] = st.TransientBytes,
                ["bytes_per_token"] = st.BytesPerToken,
            };
        Console.Out.WriteLine(CliJson.Indented(fields));
    }
}
