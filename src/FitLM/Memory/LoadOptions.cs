using FitLM.Adapters;
using FitLM.Model;
using FitLM.Weights;
namespace FitLM.Memory;

/// <summary>Where a model's forward pass runs.</summary>
public enum ComputeDevice
{
    Cpu,
    /// <summary>CUDA device 0, weights and KV cache in its memory (Backends/Cuda/CudaBackend.cs).</summary>
    Cuda,
    /// <summary>CUDA where it can run the model, else the CPU (<see cref="LanguageModel.DeviceFallback"/> says why).</summary>
    Auto,
}

/// <summary>
/// How to load a model: context, batch, and (as the planner grows) memory budget, weight streaming and KV
/// cache choices. One record so every command and the server pass the same settings the same way.
/// </summary>
public sealed record LoadOptions
{
    /// <summary>Context length in tokens; 0 = <see cref="DefaultContext"/>: the model's trained context, capped at <see cref="DefaultContextCap"/>.</summary>
    public int ContextLength { get; init; }

    /// <summary>The most positions a default context has: every command and the server use this one number.</summary>
    public const int DefaultContextCap = 4096;
    /// <summary>The longest context a model may be loaded with (a bound on what a typo can ask the allocator for).</summary>
    public const int MaxContext = 1 << 20;

    /// <summary>The context a model gets when none is asked for: its trained context, at most <see cref="DefaultContextCap"/>.</summary>
    public static int DefaultContext(int trainedContext) => Math.Min(trainedContext, DefaultContextCap);
    /// <summary>Most tokens one forward pass processes at once (prefill batch).</summary>
    public int MaxBatch { get; init; } = 256;

    // Memory budget and weight streaming (the planner).
    /// <summary>Bytes the whole process may hold; 0 = what the machine (or its cgroup) has free.</summary>
    public long MemoryBudget { get; init; }
    /// <summary>
    /// The budget may move while the model runs (--memory auto, cgroup; LanguageModel.SetBudget): weights are loaded so
    /// whole layers can move between resident and streamed, even when all of them fit now (docs/variable-memory.md).
    /// </summary>
    public bool MovableWeights { get; init; }
    /// <summary>How streamed weights are read; Naive also streams every weight, whatever the budget.</summary>
    public StreamMode Stream { get; init; } = StreamMode.Prefetch;
    /// <summary>Prepared models: fraction of FFN neurons fetched per token, chosen at random (0 = all neurons).</summary>
    public double FfnFraction { get; init; }
    /// <summary>Prepared models: choose the fraction at random even when calibrated predictors exist (I/O measurements).</summary>
    public bool RandomNeurons { get; init; }
    /// <summary>Prepared models: neurons used by the previous this-many tokens stay cached (LLM in a flash windowing; 0: none).</summary>
    public int FfnWindow { get; init; } = 4;
    /// <summary>Prepared models: the neuron predictor file; null = MODEL.predictor.gguf beside the model, if there.</summary>
    public string? PredictorPath { get; init; }
    /// <summary>Prepared models: also compute every neuron's true activation to measure the selector's recall (slow).</summary>
    public bool FfnAudit { get; init; }
    /// <summary>What the process holds besides this model's plan (runtime, other models); 0: <see cref="RuntimeFootprint.Bytes"/>, measured once, the same in every process.</summary>
    public long RuntimeBytes { get; init; }
    /// <summary>What the caller holds besides the runtime footprint (perplexity: its input text and tokens, <see cref="Footprint.TextBytes"/>).</summary>
    public long HostBytes { get; init; }
    /// <summary>
    /// `fitlm serve`: its decode slots (--parallel; 0: not a server). The plan reserves what the server holds besides the
    /// model (<see cref="Footprint.ServerBytes"/>), so a model that does not fit whole leaves room for the KV pool.
    /// </summary>
    public int ServerSlots { get; init; }
    /// <summary>The speeds a plan's predicted decode rate is priced with; null: this machine, probed once per process.</summary>
    public MachineProfile? Machine { get; init; }
    /// <summary>Rows of logits the caller keeps at once (perplexity keeps half a chunk), for the accounting.</summary>
    public int LogitRows { get; init; } = 1;
    /// <summary>Mixtures of experts: which experts the expert cache keeps and reads ahead (--expert-policy; docs/moe.md).</summary>
    public ExpertPolicy ExpertPolicy { get; init; } = ExpertPolicy.Predict;
    /// <summary>Mixtures of experts: bytes for the expert cache (--expert-cache); 0: the planner sizes it from the budget, or keeps every expert resident when they fit.</summary>
    public long ExpertCacheBytes { get; init; }
    /// <summary>Mixtures of experts, predicting policies: experts read ahead per token beyond the k the router picks (--expert-margin).</summary>
    public int ExpertPredictMargin { get; init; } = ExpertCachedWeights.DefaultPredictMargin;
    /// <summary>BitStack: how a stacked file is loaded (--weights, matrix cache); null = defaults (docs/bitstack.md).</summary>
    public StackLoadOptions? Stack { get; init; }

    /// <summary>LoRA adapters applied at inference (--lora, --lora-scale): PEFT folders or GGUF LoRA files, each with its scale.</summary>
    public IReadOnlyList<LoraRequest> Adapters { get; init; } = [];

    /// <summary>Where the forward pass runs (--device): the CPU, or a CUDA GPU that holds the whole model (docs/cuda.md).</summary>
    public ComputeDevice Device { get; init; }
    /// <summary>--gpu-memory: bytes of GPU memory the model may take (0: what the device has free); layers that do not fit are streamed from host memory.</summary>
    public long GpuMemoryBudget { get; init; }
    /// <summary>
    /// Sequences the GPU keeps a KV cache for at once (the server's --parallel, bench's --parallel), each of the full
    /// context, allocated with the model; at least one.
    /// </summary>
    public int DeviceSequences { get; init; } = 1;

    // KV cache (docs/kv-cache.md).
    /// <summary>How keys and values are held: type (f32, f16, kivi2/4, xquant4/3/2, xquant-cl) and H2O eviction.</summary>
    public KvCache.KvCacheOptions Kv { get; init; } = new();
}
