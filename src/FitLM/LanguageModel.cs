using FitLM.Adapters;
using FitLM.Adaptation;
using FitLM.Model;
using FitLM.Tokenization;
using FitLM.Memory;
using FitLM.Weights;

namespace FitLM;

/// <summary>A model ready to run: its source on storage, the weights the planner chose, the decoder.</summary>
public sealed class LanguageModel : IDisposable
{
    public IModelSource Source { get; }
    public IWeightProvider Weights { get; }
    public Transformer Transformer { get; }
    /// <summary>The BitStack weights when the model is a stacked file (the same object as <see cref="Weights"/>), else null.</summary>
    public StackedWeights? Stacked { get; }
    /// <summary>No context length was asked for and the default did not fit the memory budget: a shorter one was chosen.</summary>
    public bool ContextChosenByBudget { get; private init; }
    /// <summary>With <see cref="ComputeDevice.Auto"/>: why the model runs on the CPU (no driver, no GPU, a model the GPU path does not run); null otherwise.</summary>
    public string? DeviceFallback { get; private init; }
    public ModelConfig Config => Source.Config;
    public Tokenizer Tokenizer => Source.Tokenizer;

    // The plan as last described; a stacked model's is described again when its size or budget changed since.
    private volatile Memory.MemoryPlan _plan;
    private long _budget;

    /// <summary>
    /// Where each weight lives and what the process holds: as the planner decided at load, and for a stacked
    /// (BitStack) model as it is now, after any <see cref="Resize"/> or <see cref="ResizeToBudget"/>.
    /// </summary>
    public Memory.MemoryPlan Plan
    {
        get
        {
            var p = _plan;
            long budget = Interlocked.Read(ref _budget);
            if (Stacked is { Layout: { } layout } s && Source is GgufSource g &&
                (p.Stack?.Entries != s.LoadedEntries || p.BudgetBytes != budget))
                _plan = p = StackPlanner.Replan(p, g, layout, s.LoadedEntries, budget);
            else if (p.BudgetBytes != budget)
                _plan = p = p with { BudgetBytes = budget };
            return p;
        }
    }

    /// <summary>
    /// Keeps the model within a budget that may move while it runs (docs/variable-memory.md): <see cref="SetBudget"/>,
    /// a memory watcher or the server ask it for a budget, and it adapts between forward passes.
    /// </summary>
    public MemoryGovernor Governor { get; }

    /// <summary>Held while a forward pass runs (by <see cref="Generation.Generator"/> and the server): adaptations never run inside one.</summary>
    public object StepLock { get; } = new();

    /// <summary>
    /// A new memory budget for the whole process, in bytes: the model gives memory back (BitStack blocks, a smaller KV
    /// type, layers streamed instead of resident) or takes it again, cheapest first. Applied now when no forward pass
    /// runs, else before the next one. Returns the adaptation when it was applied now.
    /// </summary>
    public BudgetAdaptation? SetBudget(long bytes)
    {
        Governor.Request(bytes);
        if (!Monitor.TryEnter(StepLock)) return null;
        try { return Governor.Apply(); }
        finally { Monitor.Exit(StepLock); }
    }

    /// <summary>Applies a budget asked for since the last pass (callers of the transformer call it between passes, holding <see cref="StepLock"/>).</summary>
    public BudgetAdaptation? AdaptBetweenSteps() => Governor.Pending ? Governor.Apply() : null;

    private LanguageModel(IModelSource source, IWeightProvider weights, Transformer transformer, Memory.MemoryPlan plan)
    {
        _plan = plan;
        _budget = plan.BudgetBytes;
        Source = source;
        Weights = weights;
        Stacked = weights as StackedWeights;
        Transformer = transformer;
        Governor = new MemoryGovernor(plan.BudgetBytes, Fits);
        Governor.Adapted += a => BudgetChanged(a.NewBudget);
        // Cheapest first (docs/variable-memory.md): BitStack blocks, the KV cache's type, then whole layers.
        if (Stacked is { Layout: not null } stacked) Governor.Add(new StackLever(stacked));
        Kv = new KvLever(transformer, () => Plan, p => _plan = p);
        Governor.Add(Kv);
        // LoRA's matrices wrap the base ones, which stay the same objects wherever their bytes move.
        if ((weights as StreamingWeights ?? (weights as LoraWeights)?.Inner as StreamingWeights) is { } streaming)
            Governor.Add(new LayerLever(streaming, source, () => Plan, p => _plan = p));
    }

    /// <summary>The KV cache's lever: the server registers the stores of its sequences with it so they are requantized too.</summary>
    public KvLever Kv { get; }

    /// <summary>
    /// Whether the process fits <paramref name="budget"/> now: its resident set as the kernel counts it, and for a model
    /// that is not stacked the plan's promise too (which counts the KV cache at its full context, so a fit holds as the
    /// sequence grows); for a stacked model, that the blocks it holds fit beside the rest with the stack planner's margin
    /// (<see cref="StackPlanner.EntriesForBudget"/>).
    /// </summary>
    private bool Fits(long budget) =>
        Runtime.ProcessMemory.RssBytes() <= budget && (Stacked is { Layout: not null } s
            ? StackPlanner.EntriesForBudget(s, budget, out _) >= s.LoadedEntries
            : _plan.TotalBytes <= budget);

    /// <summary>Opens a .gguf file or Hugging Face folder and loads its weights for a context of <paramref name="contextLength"/> tokens.</summary>
    public static LanguageModel Load(string path, int contextLength = 0, int maxBatch = 256) =>
        Load(path, new LoadOptions { ContextLength = contextLength, MaxBatch = maxBatch });

    /// <summary>Opens a .gguf file or Hugging Face folder and loads it as <paramref name="options"/> say.</summary>
    public static LanguageModel Load(string path, LoadOptions options)
    {
        var source = ModelSource.Open(path);
        IWeightProvider? weights = null;
        try
        {
            int defaultCtx = LoadOptions.DefaultContext(source.Config.ContextLength);
            int ctx = options.ContextLength > 0 ? options.ContextLength : defaultCtx;
            if (ctx > LoadOptions.MaxContext) throw new FitLMException($"context length {ctx} is too large");
            if (options.MaxBatch < 1) throw new FitLMException($"batch size {options.MaxBatch} is out of range");
            if (options.Device == ComputeDevice.Cuda) return LoadOnGpu(source, options, ctx);
            string? fallback = null;
            if (options.Device == ComputeDevice.Auto)
            {
                try { return LoadOnGpu(source, options, ctx); }
                catch (FitLMException e) { fallback = e.Message; } // the CPU then loads it as usual; a broken file fails there too
            }
            var adapters = LoadAdapters(source, options);
            // BitStack (docs/bitstack.md): a stacked file loads the longest prefix of its block stack that fits.
            if (source is GgufSource stackedSource && StackLayout.IsStacked(stackedSource.File))
            {
                var (stacked, stackPlan) = StackPlanner.Load(stackedSource, options, ctx);
                weights = stacked;
                return new LanguageModel(source, stacked, new Transformer(source.Config, stacked, ctx, options.MaxBatch, options.Kv), stackPlan) { DeviceFallback = fallback };
            }
            bool bundled = ModelValidation.IsBundled(source);
            if (options.FfnFraction is < 0 or > 1) throw new FitLMException($"FFN fraction {options.FfnFraction} is out of range [0, 1]");
            if (options.FfnFraction is > 0 and < 1 && !bundled)
                throw new FitLMException($"{path}: a fraction of FFN neurons needs a prepared model (fitlm prepare -m MODEL -o MODEL.flash.gguf)");
            if ((options.PredictorPath != null || options.FfnAudit) && !bundled)
                throw new FitLMException($"{path}: neuron predictors and their recall need a prepared model (fitlm prepare -m MODEL -o MODEL.flash.gguf)");
            var (plan, flash) = PlanLoad(path, source, options, ctx, adapterBytes: LoraWeights.BytesFor(adapters));
            ctx = plan.Context;
            // A budget that may move: layers must be able to move between resident and streamed, even all resident now.
            weights = plan.Streams || options.MovableWeights ? new StreamingWeights(source, plan.Tensors, plan.Mode) : new ResidentWeights(source);
            weights = WithExpertCache(weights, source, plan, options);
            if (flash != null) weights = new FlashWeights(weights, source, flash.Selector, flash.WindowTokens, options.FfnAudit);
            // LoRA (--lora): the adapted matrices multiply through the adapters; the base weights stay as planned.
            if (adapters.Count > 0) weights = new LoraWeights(weights, adapters);
            var transformer = new Transformer(source.Config, weights, ctx, options.MaxBatch, options.Kv);
            if (plan.Streams) Storage.PageCache.Drop(source);
            return new LanguageModel(source, weights, transformer, plan)
            {
                ContextChosenByBudget = options.ContextLength == 0 && ctx < defaultCtx,
                DeviceFallback = fallback,
            };
        }
        catch
        {
            weights?.Dispose();
            source.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Why the GPU path does not run <paramref name="source"/> with <paramref name="options"/> (one line naming --device
    /// cpu), or null: LoRA, stacked and prepared files, H2O and the XQuant KV types, mixtures of experts, heads wider
    /// than the attention kernel. Whether a GPU is there is not asked here.
    /// </summary>
    public static string? GpuRefusal(IModelSource source, LoadOptions options)
    {
        string NotYet(string what) => $"{source.Path}: {what} does not run on the GPU yet; use --device cpu";
        if (options.Adapters.Count > 0) return NotYet("--lora");
        if (source is GgufSource g && StackLayout.IsStacked(g.File)) return NotYet("a stacked (BitStack) model");
        if (ModelValidation.IsBundled(source)) return NotYet("a prepared (LLM in a flash) model");
        if (Backends.Cuda.DeviceKvLayout.Unsupported(options.Kv) is { } kv) return NotYet(kv);
        if (Backends.Cuda.CudaBackend.Unsupported(source.Config) is { } model) return $"{source.Path}: {model}; use --device cpu";
        return null;
    }

    /// <summary>
    /// The model on CUDA device 0 (--device cuda, docs/cuda.md): weights and KV cache in GPU memory, nothing of the weights
    /// held on the host. What the GPU path does not run yet is refused here with one line (<see cref="GpuRefusal"/>).
    /// </summary>
    private static LanguageModel LoadOnGpu(IModelSource source, LoadOptions options, int ctx)
    {
        if (GpuRefusal(source, options) is { } why) throw new FitLMException(why);
        var device = new Backends.Cuda.CudaBackend(source, ctx, options.MaxBatch, options.Kv, options.GpuMemoryBudget,
            naiveStreaming: options.Stream == StreamMode.Naive, ordinal: 0, log: m => Console.Error.WriteLine(m),
            sequences: Math.Max(1, options.DeviceSequences), hostMemory: GpuHostMemory(source, options));
        try
        {
            var plan = new Memory.MemoryPlan
            {
                BudgetBytes = options.MemoryBudget > 0 ? options.MemoryBudget : SystemMemory.AvailableBytes(),
                Context = ctx,
                Tensors = [], // every weight is in GPU memory: the host holds none
                Mode = options.Stream,
                RuntimeBytes = RuntimeBytes(source, options),
                KvBytes = 0,
                ScratchBytes = 0,
                StreamBufferBytes = 0,
                StreamedBytesPerToken = 0,
                CostModelNote = device.Description,
            };
            var transformer = new Transformer(device, ctx, options.MaxBatch, options.Kv);
            return new LanguageModel(source, new ResidentWeights(source), transformer, plan);
        }
        catch
        {
            device.Dispose();
            throw;
        }
    }

    private static long RuntimeBytes(IModelSource source, LoadOptions options) =>
        options.RuntimeBytes > 0 ? options.RuntimeBytes : RuntimeFootprint.Bytes(source);

    /// <summary>
    /// Host bytes --memory leaves the pinned copies of layers streamed to the GPU (no --memory: no limit); the layers past
    /// it are read from the model file every pass. `fitlm plan --device cuda` asks the same.
    /// </summary>
    internal static long GpuHostMemory(IModelSource source, LoadOptions options) =>
        Backends.Cuda.CudaBackend.HostMemoryFor(options.MemoryBudget, RuntimeBytes(source, options));

    /// <summary>
    /// A mixture of experts whose experts the plan puts in an expert cache, or whose options ask for one (--expert-cache,
    /// or --expert-policy none: every routed expert read each time): the experts pass through <see cref="ExpertCachedWeights"/>,
    /// with the plan's slots per layer, else as many as the cache bytes hold in every layer (at least k); the naive
    /// policy keeps only a batch's experts.
    /// </summary>
    private static IWeightProvider WithExpertCache(IWeightProvider weights, IModelSource source, Memory.MemoryPlan plan, LoadOptions options)
    {
        bool asked = options.ExpertCacheBytes > 0 || options.ExpertPolicy == ExpertPolicy.None;
        if (plan.Experts == null && !asked) return weights;
        var c = source.Config;
        if (!c.IsMoe) throw new FitLMException($"{source.Path}: the expert cache (--expert-cache, --expert-policy) needs a mixture of experts, and this model has none");
        var policy = plan.Experts?.Policy ?? options.ExpertPolicy;
        int slots = policy == ExpertPolicy.None ? c.ExpertsUsed
            : plan.Experts?.SlotsPerLayer ?? ExpertCachedWeights.SlotsFor(options.ExpertCacheBytes, source);
        return new ExpertCachedWeights(weights, source, slots, policy, options.ExpertPredictMargin);
    }

    /// <summary>
    /// The plan <see cref="Load"/> makes for a model that is not stacked, at <paramref name="context"/> positions:
    /// when no context was asked for and a budget was, the budget decides it (halving down to 256 positions) rather
    /// than refusing a budget that a shorter context fits; the plan's Context is the one chosen. `fitlm plan` prints
    /// this same plan, with a <paramref name="storage"/> probe for the speed prediction. The probe prices the plan and never
    /// changes it: `run` does not probe, so a plan that took the mode predicted faster showed a plan `run` does not make
    /// (BudgetTests.PlanAndRunChooseTheSamePlan failed so in CI when the probe ran slow).
    /// </summary>
    /// <remarks><paramref name="adapterBytes"/>: what the LoRA adapters of <paramref name="options"/> hold (null: loaded here to count them).</remarks>
    public static (Memory.MemoryPlan Plan, Memory.Planner.FlashOptions? Flash) PlanLoad(string path, IModelSource source, LoadOptions options,
        int context, Storage.StorageProfile? storage = null, long? adapterBytes = null)
    {
        long adapters = adapterBytes ?? LoraWeights.BytesFor(LoadAdapters(source, options));
        var flash = FlashOptionsFor(path, source, options);
        while (true)
        {
            try
            {
                return (Memory.Planner.Plan(source, new Memory.Planner.Options
                {
                    Flash = flash,
                    BudgetBytes = options.MemoryBudget > 0 ? options.MemoryBudget : Memory.SystemMemory.AvailableBytes(),
                    Context = context,
                    MaxBatch = options.MaxBatch,
                    LogitRows = options.LogitRows,
                    RuntimeBytes = options.RuntimeBytes,
                    HostBytes = options.HostBytes,
                    ServerSlots = options.ServerSlots,
                    AdapterBytes = adapters,
                    Machine = options.Machine,
                    Mode = options.Stream,
                    StreamEverything = options.Stream == StreamMode.Naive,
                    Storage = storage,
                    Kv = options.Kv,
                    ExpertPolicy = options.ExpertPolicy,
                    ExpertCacheBytes = options.ExpertCacheBytes,
                }), flash);
            }
            catch (BudgetTooSmallException) when (options.ContextLength == 0 && options.MemoryBudget > 0 && context > 256)
            {
                context = Math.Max(256, context / 2);
            }
        }
    }

    /// <summary>
    /// The LoRA adapters of <paramref name="options"/>, loaded for <paramref name="source"/>: refused on a stacked
    /// model (its matrices are block stacks) and, for the FFN, on a prepared one (its FFN is bundled per neuron).
    /// </summary>
    private static IReadOnlyList<ScaledAdapter> LoadAdapters(IModelSource source, LoadOptions options)
    {
        if (options.Adapters.Count == 0) return [];
        if (source is GgufSource g && StackLayout.IsStacked(g.File))
            throw new FitLMException($"{source.Path}: LoRA adapters cannot be applied to a stacked (BitStack) model; apply them to the original model (or merge with fitlm export, then compress)");
        var adapters = LoraRequest.LoadAll(options.Adapters, source);
        if (ModelValidation.IsBundled(source))
            foreach (var a in adapters)
                if (a.Adapter.Pairs.FirstOrDefault(p => p.Name.Contains(".ffn_", StringComparison.Ordinal)) is { } ffn)
                    throw new FitLMException($"{source.Path}: a prepared model bundles its FFN, so the adapter's '{ffn.Name}' cannot be applied; merge the adapter into the original model (fitlm export), then prepare it");
        return adapters;
    }

    /// <summary>How a prepared model's FFN neurons are chosen and windowed under <paramref name="options"/> (null: not prepared).</summary>
    private static Memory.Planner.FlashOptions? FlashOptionsFor(string path, IModelSource source, LoadOptions options) =>
        ModelValidation.IsBundled(source) ? new Memory.Planner.FlashOptions(ChooseSelector(path, source.Config, options), Math.Max(0, options.FfnWindow)) : null;

    /// <summary>
    /// Which FFN neurons a prepared model computes: with calibrated predictors beside the file, the predicted
    /// ones (ReLU: all predicted active; others: the top --ffn-fraction); without, a random fraction (an I/O
    /// measurement) or all of them.
    /// </summary>
    private static INeuronSelector ChooseSelector(string path, ModelConfig c, LoadOptions o)
    {
        if (o.PredictorPath != null && !File.Exists(o.PredictorPath)) throw new FitLMException($"{o.PredictorPath}: predictor file not found (fitlm calibrate writes one)");
        string sidecar = o.PredictorPath ?? NeuronPredictor.SidecarPath(path);
        bool sparse = o.FfnFraction is > 0 and < 1;
        if (File.Exists(sidecar) && !o.RandomNeurons && (sparse || c.Activation == FfnActivation.Relu))
            return new PredictedNeurons(NeuronPredictor.Load(sidecar, c), sparse ? o.FfnFraction : 1);
        return sparse ? new RandomFraction(o.FfnFraction) : new AllNeurons();
    }

    /// <summary>
    /// BitStack: resizes a stacked model to <paramref name="weightBytes"/> of weights while it runs (shrinking frees
    /// memory, growing reads only the new blocks); returns the weight bytes now loaded. See also
    /// <see cref="ResizeToBudget"/>.
    /// </summary>
    public long Resize(long weightBytes) => Weights.Resize(weightBytes);

    /// <summary>
    /// Resizes a running stacked model to a new memory budget for the whole process: the weights that fit beside
    /// what the process holds now. Returns the weight bytes loaded.
    /// </summary>
    public long ResizeToBudget(long budgetBytes)
    {
        if (Stacked is not { Layout: not null } stacked)
            throw new FitLMException($"{Source.Path}: only a stacked (BitStack) model can be resized (fitlm compress makes one)");
        long bytes = StackPlanner.ResizeToBudget(stacked, budgetBytes);
        BudgetChanged(budgetBytes); // the model's plan now describes this budget
        return bytes;
    }

    /// <summary>The process's budget changed (the planner resized the model to it): the plan describes the new one.</summary>
    internal void BudgetChanged(long budgetBytes) => Interlocked.Exchange(ref _budget, budgetBytes);

    public void Dispose()
    {
        Transformer.Device?.Dispose();
        Weights.Dispose();
        Source.Dispose();
    }
}
