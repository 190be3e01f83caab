using FitLM.KvCache;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Storage;
using FitLM.Weights;

namespace FitLM.Memory;

/// <summary>
/// Decides, for a model and a memory budget, which weights stay resident and which are streamed from
/// storage, and sizes the KV cache and scratch. Everything the process will hold is counted: the runtime
/// (measured), KV cache, activations, stream buffers and resident weights.
///
/// Units of placement are whole layers (all of blk.N.*), the output head and the token embedding: a streamed
/// unit is read in large contiguous chunks, which storage serves fastest. Every dense weight is read once per
/// token whether resident or streamed, so any resident byte saves one streamed byte; the planner keeps the
/// output head and then whole layers resident while the budget allows, and streams the rest through two
/// buffers of the largest streamed unit (one being computed, the next being read). The embedding is only
/// read one row per token, so it is the first thing to stream.
///
/// A mixture of experts that does not fit whole keeps everything but its routed experts resident and holds
/// the experts in an expert cache (<see cref="ExpertPlanner"/>): a token reads only the experts its router
/// picks and the cache lacks, not every expert of every streamed layer.
/// </summary>
public static class Planner
{
    public sealed record Options
    {
        public long BudgetBytes { get; init; }
        public int Context { get; init; } = 2048;
        public int MaxBatch { get; init; } = 256;
        /// <summary>Rows of logits the caller keeps at once (perplexity keeps half a chunk).</summary>
        public int LogitRows { get; init; } = 1;
        public StreamMode Mode { get; init; } = StreamMode.Prefetch;
        /// <summary>Force every layer and the head to be streamed (the naive baseline streams everything).</summary>
        public bool StreamEverything { get; init; }
        /// <summary>What the process holds besides the plan's parts; 0: <see cref="RuntimeFootprint.Bytes"/>.</summary>
        public long RuntimeBytes { get; init; }
        public StorageProfile? Storage { get; init; }
        /// <summary>The speeds <see cref="Storage"/>'s prediction is priced with; null: this machine, probed once per process.</summary>
        public MachineProfile? Machine { get; init; }
        /// <summary>What the caller holds besides the runtime footprint (perplexity: its input text and tokens).</summary>
        public long HostBytes { get; init; }
        /// <summary>A server's decode slots (<see cref="LoadOptions.ServerSlots"/>): what it holds is counted with the runtime and recorded in the plan.</summary>
        public int ServerSlots { get; init; }
        /// <summary>LoRA adapters applied at inference (--lora): their A and B matrices, float32, held beside the weights.</summary>
        public long AdapterBytes { get; init; }
        /// <summary>For prepared (FFN-bundled) models: which neurons each token gets and the window length.</summary>
        public FlashOptions? Flash { get; init; }
        /// <summary>How the KV cache is held (--kv): its bytes are counted in this type (KvStoreFactory.PlanBytes), so a smaller type buys weights or context.</summary>
        public KvCacheOptions Kv { get; init; } = new();
        /// <summary>Sequences whose KV caches the plan holds at the full context.</summary>
        public int Sequences { get; init; } = 1;
        /// <summary>Mixtures of experts: which experts the expert cache keeps and reads ahead (--expert-policy).</summary>
        public ExpertPolicy ExpertPolicy { get; init; } = ExpertPolicy.Predict;
        /// <summary>Mixtures of experts: the expert cache's bytes (--expert-cache; it then holds the experts even where all fit); 0: sized from the budget.</summary>
        public long ExpertCacheBytes { get; init; }
        /// <summary>Mixtures of experts that do not fit whole may hold their routed experts in an expert cache; false: whole layers stream, as a dense model's do.</summary>
        public bool ExpertCache { get; init; } = true;
    }

    public sealed record FlashOptions(INeuronSelector Selector, int WindowTokens);

    public static MemoryPlan Plan(IModelSource source, Options o)
    {
        var c = source.Config;
        // A fixed, measured footprint rather than the RSS now: the same inputs give the same plan whatever ran before.
        long server = Footprint.ServerBytes(c, o.ServerSlots, o.Context);
        long runtime = (o.RuntimeBytes > 0 ? o.RuntimeBytes : RuntimeFootprint.Bytes(source)) + o.HostBytes + server;
        long kv = KvStoreFactory.PlanBytes(c, o.Kv, o.Context, o.Sequences, o.MaxBatch);
        long scratch = Footprint.ScratchBytes(c, o.Context, o.MaxBatch) + 4L * c.Vocab * Math.Max(1, o.LogitRows);
        long fixedBytes = runtime + kv + scratch + o.AdapterBytes;

        // Units: layers, the head, the embedding; small vectors (norms, biases) always stay resident.
        bool tied = source.Find("output.weight") == null;
        var units = new List<Unit>();
        var layerTensors = new List<TensorDesc>[c.Layers];
        for (int l = 0; l < c.Layers; l++) layerTensors[l] = new();
        var small = new List<TensorDesc>();
        TensorDesc embedding = source.Get("token_embd.weight");
        TensorDesc? head = source.Find("output.weight");
        // Bundled FFNs (fitlm prepare) are read neuron by neuron into per-layer windows, not as units.
        var bundles = source.Tensors.Where(t => t.Name.EndsWith(".ffn_bundle.weight", StringComparison.Ordinal)).ToList();
        var flash = bundles.Count > 0 ? o.Flash ?? new FlashOptions(new AllNeurons(), 4) : null;
        long flashBytes = bundles.Sum(b => FlashFeedForward.MemoryBytes(c, b.Type, flash!.Selector, flash.WindowTokens));
        fixedBytes += flashBytes;
        foreach (var t in source.Tensors)
        {
            if (bundles.Contains(t)) continue;
            if (t.Shape.Length < 2) { small.Add(t); continue; }
            int layer = TensorNames.LayerOf(t.Name);
            if (layer >= 0) layerTensors[layer].Add(t);
            else if (t != embedding && t != head) small.Add(t);
        }
        var headUnit = new Unit("output", -1, [tied ? embedding : head!]);
        units.Add(headUnit);
        for (int l = 0; l < c.Layers; l++) units.Add(new Unit($"layer {l}", l, layerTensors[l].ToArray()));
        long smallBytes = small.Sum(t => t.ByteSize);
        long embeddingBytes = tied ? 0 : embedding.ByteSize;
        long allWeights = units.Sum(u => u.Bytes) + smallBytes + embeddingBytes;

        bool fitsWhole = !o.StreamEverything && fixedBytes + allWeights <= o.BudgetBytes;
        // Mixtures of experts: the routed experts in an expert cache, every other weight resident (ExpertPlanner); a
        // budget that holds less than that is refused below with its minimum.
        long expertMinimum = long.MaxValue;
        long expertStacks = ExpertPlanner.StackBytes(source);
        // The expert readers' staging buffers count as scratch (only a plan with an expert cache has them).
        long readers = ExpertPlanner.ReaderBytes(source);
        if (ExpertPlanner.Applies(source, o, fitsWhole, bundles.Count > 0) &&
            ExpertPlanner.Plan(source, o, fixedBytes + allWeights - expertStacks + readers, out expertMinimum) is { } experts)
            return WithExperts(source, o, experts, runtime, server, kv, scratch + readers);

        bool embeddingResident;
        if (fitsWhole)
        {
            foreach (var u in units) u.Resident = true;
            embeddingResident = true;
        }
        else
        {
            // Smallest plan: everything streamed, two buffers of the largest unit.
            long maxUnit = units.Max(u => u.Bytes);
            long embeddingRowBuffer = tied ? 0 : EmbeddingRowBufferBytes(embedding);
            long minimum = fixedBytes + smallBytes + 2 * Aligned(maxUnit) + embeddingRowBuffer;
            // Streaming whole layers would read every expert of a layer where a token runs k of them, and the expert
            // stacks cannot be cut into experts from a stream slot: a mixture of experts below its expert cache's
            // minimum is refused with that minimum (set only where the branch applied and its plan did not fit).
            if (expertMinimum != long.MaxValue)
                throw new BudgetTooSmallException(ExpertPlanner.TooSmall(o.BudgetBytes, o.Context, expertMinimum, runtime, kv, scratch + readers,
                    allWeights - expertStacks, expertMinimum - (fixedBytes + allWeights - expertStacks + readers), c.ExpertsUsed, o.Kv.ToString()), expertMinimum);
            if (minimum > o.BudgetBytes)
                throw new BudgetTooSmallException(
                    $"a budget of {ProcessMemory.Format(o.BudgetBytes)} cannot run this model with context {o.Context}: " +
                    $"the smallest plan needs {ProcessMemory.Format(minimum)} (runtime {ProcessMemory.Format(runtime)}, KV cache {ProcessMemory.Format(kv)} ({o.Kv}), " +
                    $"activations {ProcessMemory.Format(scratch)}, two stream buffers of {ProcessMemory.Format(Aligned(maxUnit))}); " +
                    $"give --memory {Math.Ceiling(minimum / (double)(1 << 20))}MiB or more, a smaller context or a smaller --kv type", minimum);
            if (!o.StreamEverything)
            {
                // Keep the head, then whole layers, resident while the budget allows; the stream buffers
                // shrink as big units become resident, so iterate until the choice is stable.
                for (int pass = 0; pass < 4; pass++)
                {
                    long slots = 2 * Aligned(units.Where(u => !u.Resident).Select(u => u.Bytes).DefaultIfEmpty(0).Max());
                    long left = o.BudgetBytes - fixedBytes - smallBytes - embeddingRowBuffer - slots - units.Where(u => u.Resident).Sum(u => u.Bytes);
                    bool changed = false;
                    foreach (var u in units.Where(u => !u.Resident))
                    {
                        if (u.Bytes > left) continue;
                        // Making the last streamed unit resident frees both stream buffers.
                        u.Resident = true;
                        left -= u.Bytes;
                        changed = true;
                    }
                    if (!changed) break;
                }
            }
            long slotsNow = 2 * Aligned(units.Where(u => !u.Resident).Select(u => u.Bytes).DefaultIfEmpty(0).Max());
            long leftNow = o.BudgetBytes - fixedBytes - smallBytes - embeddingRowBuffer - slotsNow - units.Where(u => u.Resident).Sum(u => u.Bytes);
            embeddingResident = !tied && !o.StreamEverything && embedding.ByteSize <= leftNow + embeddingRowBuffer;
        }

        var plans = new List<TensorPlan>();
        foreach (var t in small) plans.Add(new TensorPlan(t, Placement.Resident, TensorNames.LayerOf(t.Name)));
        if (!tied) plans.Add(new TensorPlan(embedding, embeddingResident ? Placement.Resident : Placement.Streamed, -1));
        foreach (var u in units)
            foreach (var t in u.Tensors)
                plans.Add(new TensorPlan(t, u.Resident ? Placement.Resident : Placement.Streamed, u.Layer));
        foreach (var b in bundles) plans.Add(new TensorPlan(b, Placement.Streamed, TensorNames.LayerOf(b.Name)));

        var streamedUnits = units.Where(u => !u.Resident).ToList();
        long streamBuffers = streamedUnits.Count == 0 ? 0 : 2 * Aligned(streamedUnits.Max(u => u.Bytes));
        if (!tied && !embeddingResident) streamBuffers += EmbeddingRowBufferBytes(embedding);
        long perToken = streamedUnits.Sum(u => u.Bytes) + (!tied && !embeddingResident ? embedding.ByteSize / embedding.Rows : 0);
        long flashPerToken = bundles.Sum(b => FlashBytesPerToken(c, b, flash!));
        perToken += flashPerToken;

        var plan = new MemoryPlan
        {
            FlashBytes = flashBytes,
            FlashBytesPerToken = flashPerToken,
            FlashNeuronFraction = flash == null ? 1 : flash.Selector.MaxPerToken(c.FfnDim) / (double)c.FfnDim,
            FlashReadBytes = bundles.Count == 0 ? 0 : bundles.Max(b => b.ByteSize / c.FfnDim) + DirectFile.Alignment,
            BudgetBytes = o.BudgetBytes,
            Context = o.Context,
            Tensors = plans,
            Mode = o.Mode,
            RuntimeBytes = runtime,
            ServerReserveBytes = server,
            KvBytes = kv,
            ScratchBytes = scratch,
            StreamBufferBytes = streamBuffers,
            StreamedBytesPerToken = perToken,
            AdapterBytes = o.AdapterBytes,
        };
        // The process holds only the runtime while it plans: the compute probe may use what the budget leaves beside it.
        return o.Storage is { } storage ? CostModel.Predict(plan, source, storage, o.Machine, StorageProbe.RoomWithin(o.BudgetBytes)) : plan;
    }

    /// <summary>
    /// The plan of a mixture of experts whose routed experts live in the expert cache: every other tensor resident,
    /// nothing streamed by layers, the misses read per token.
    /// </summary>
    private static MemoryPlan WithExperts(IModelSource source, Options o, ExpertPlan experts, long runtime, long server, long kv, long scratch)
    {
        var plans = source.Tensors
            .Select(t => new TensorPlan(t, TensorNames.IsExpertStack(t.Name) ? Placement.Experts : Placement.Resident, TensorNames.LayerOf(t.Name)))
            .ToList();
        var plan = new MemoryPlan
        {
            BudgetBytes = o.BudgetBytes,
            Context = o.Context,
            Tensors = plans,
            Mode = o.Mode,
            RuntimeBytes = runtime,
            ServerReserveBytes = server,
            KvBytes = kv,
            ScratchBytes = scratch,
            StreamBufferBytes = 0,
            StreamedBytesPerToken = experts.ReadBytesPerToken,
            AdapterBytes = o.AdapterBytes,
            Experts = experts,
        };
        return o.Storage is { } storage ? CostModel.Predict(plan, source, storage, o.Machine, StorageProbe.RoomWithin(o.BudgetBytes)) : plan;
    }

    /// <summary>
    /// Expected bytes a layer's window reads per token: neurons chosen now but by none of the previous k
    /// tokens (for independent choices of a fraction F: F·(1−F)^k of the neurons; all neurons with a window
    /// keep everything cached after the first token), each one read rounded out to pages.
    /// </summary>
    public static long FlashBytesPerToken(ModelConfig c, TensorDesc bundle, FlashOptions flash)
    {
        double f = flash.Selector.MaxPerToken(c.FfnDim) / (double)c.FfnDim;
        double fresh = f * Math.Pow(1 - f, Math.Max(0, flash.WindowTokens)) * c.FfnDim;
        long bundleBytes = bundle.ByteSize / c.FfnDim;
        return (long)(fresh * (bundleBytes + DirectFile.Alignment));
    }


    /// <summary>Embedding rows are read one at a time with direct I/O: an aligned buffer per row for a batch.</summary>
    private static long EmbeddingRowBufferBytes(TensorDesc embedding) =>
        Aligned(embedding.ByteSize / embedding.Rows) + 2 * Storage.DirectFile.Alignment;

    private static long Aligned(long bytes) => (bytes + 2 * Storage.DirectFile.Alignment + 4095) / 4096 * 4096;

    private sealed class Unit(string name, int layer, TensorDesc[] tensors)
    {
        public string Name { get; } = name;
        public int Layer { get; } = layer;
        public TensorDesc[] Tensors { get; } = tensors;
        public long Bytes { get; } = tensors.Sum(t => t.ByteSize);
        public bool Resident { get; set; }
    }

    /// <summary>
    /// The placement for a new budget while the model runs, everything else as in <paramref name="current"/> (context,
    /// KV cache, scratch, runtime, adapters, stream mode): <see cref="Plan"/>'s own choice of resident units, with the
    /// fixed parts made to equal the current plan's. A budget below the smallest plan gives the smallest plan (every
    /// unit streamed) and <c>BelowSmallest</c>, never an exception: the caller keeps running there and says so once.
    /// StreamingWeights.ApplyPlacement carries the result out.
    /// </summary>
    public static (MemoryPlan Plan, bool BelowSmallest) Replace(MemoryPlan current, IModelSource source, long newBudget)
    {
        if (current.Stack != null) throw new FitLMException($"{source.Path}: a stacked (BitStack) model is resized by its blocks (StackPlanner), not by moving layers");
        var o = new Options
        {
            Context = current.Context,
            RuntimeBytes = current.RuntimeBytes,
            AdapterBytes = current.AdapterBytes,
            Mode = current.Mode,
            StreamEverything = current.Mode == StreamMode.Naive,
            // A model loaded with layers that move keeps moving layers; one with an expert cache keeps its cache.
            ExpertCache = current.Experts != null,
            ExpertPolicy = current.Experts?.Policy ?? ExpertPolicy.Predict,
        };
        // Plan counts KV, scratch and flash windows from its options; HostBytes makes up the difference so the fixed
        // bytes are exactly the current plan's, whatever options it was made with.
        var probe = Plan(source, o with { BudgetBytes = long.MaxValue / 4, StreamEverything = false });
        long difference = current.KvBytes + current.ScratchBytes + current.FlashBytes - (probe.KvBytes + probe.ScratchBytes + probe.FlashBytes);
        o = o with { HostBytes = difference };
        MemoryPlan fresh;
        bool below = false;
        try
        {
            fresh = Plan(source, o with { BudgetBytes = newBudget });
        }
        catch (BudgetTooSmallException e)
        {
            fresh = Plan(source, o with { BudgetBytes = e.MinimumBytes, StreamEverything = true });
            below = true;
        }
        var plan = current with
        {
            BudgetBytes = newBudget,
            Tensors = fresh.Tensors,
            StreamBufferBytes = fresh.StreamBufferBytes,
            StreamedBytesPerToken = fresh.StreamedBytesPerToken - fresh.FlashBytesPerToken + current.FlashBytesPerToken,
            Experts = fresh.Experts,
            PredictedTokensPerSecond = 0, // the cost model's prediction was for the old placement
            CostModelNote = null,
        };
        return (plan, below);
    }
}
