using FitLM.Model;
using FitLM.Weights;

namespace FitLM.Memory;

/// <summary>
/// What the planner decided for a model under a budget: where each tensor lives and what every part of
/// the process will hold. <see cref="TotalBytes"/> is the promise checked against the budget.
/// </summary>
public sealed record MemoryPlan
{
    public required long BudgetBytes { get; init; }
    public required int Context { get; init; }
    public required IReadOnlyList<TensorPlan> Tensors { get; init; }
    public required StreamMode Mode { get; init; }
    /// <summary>The .NET runtime, code, thread stacks and tokenizer: what the process holds before weights.</summary>
    public required long RuntimeBytes { get; init; }
    /// <summary>Of <see cref="RuntimeBytes"/>, what `fitlm serve` reserved for itself (overhead and decode slots; 0 elsewhere).</summary>
    public long ServerReserveBytes { get; init; }
    public required long KvBytes { get; init; }
    public required long ScratchBytes { get; init; }
    /// <summary>Buffers streamed tensors are read into: two slots of the largest streamed unit (double buffering).</summary>
    public required long StreamBufferBytes { get; init; }
    /// <summary>Window caches and staging of bundled FFNs (prepared models), all layers.</summary>
    public long FlashBytes { get; init; }
    /// <summary>Bytes read from storage per generated token (streamed tensors and fresh FFN neurons together).</summary>
    public required long StreamedBytesPerToken { get; init; }
    /// <summary>Of <see cref="StreamedBytesPerToken"/>, the fresh neurons of bundled FFNs: many small reads, not whole tensors.</summary>
    public long FlashBytesPerToken { get; init; }
    /// <summary>The size of one fresh-neuron read (a bundle rounded out to pages): what the cost model prices flash reads at.</summary>
    public long FlashReadBytes { get; init; }
    /// <summary>Share of FFN neurons a prepared model multiplies per token (1: all, or not prepared).</summary>
    public double FlashNeuronFraction { get; init; } = 1;
    /// <summary>Predicted decode speed from the cost model, or 0 when no storage probe was given.</summary>
    public double PredictedTokensPerSecond { get; init; }
    public string? CostModelNote { get; init; }
    /// <summary>Stacked (BitStack) models: the size loaded (blocks, weight bytes, caches, bytes multiplied per token); null otherwise.</summary>
    public StackPlan? Stack { get; init; }
    /// <summary>LoRA adapters applied at inference (--lora): their matrices, float32, resident beside the weights.</summary>
    public long AdapterBytes { get; init; }
    /// <summary>Mixtures of experts whose routed experts do not all stay resident: the expert cache (docs/moe.md); null otherwise.</summary>
    public ExpertPlan? Experts { get; init; }

    public long ResidentWeightBytes => Tensors.Where(t => t.Placement == Placement.Resident).Sum(t => t.Tensor.ByteSize);
    public bool Bundled => Tensors.Any(t => t.Tensor.Name.EndsWith(".ffn_bundle.weight", StringComparison.Ordinal));
    public long StreamedWeightBytes => Tensors.Where(t => t.Placement == Placement.Streamed).Sum(t => t.Tensor.ByteSize);
    /// <summary>Everything counted against the budget (a stacked model's working memory for its kernels and resizing included).</summary>
    public long TotalBytes => RuntimeBytes + KvBytes + ScratchBytes + StreamBufferBytes + FlashBytes + ResidentWeightBytes + AdapterBytes + (Stack?.TransientBytes ?? 0) + (Experts?.CacheBytes ?? 0);
    /// <summary>Whether any unit (layer part, head, embedding) is streamed; bundled FFNs are handled by their windows.</summary>
    public bool Streams => Tensors.Any(t => t.Placement == Placement.Streamed && !t.Tensor.Name.EndsWith(".ffn_bundle.weight", StringComparison.Ordinal));

    public Placement PlacementOf(string name) =>
        Tensors.FirstOrDefault(t => t.Tensor.Name == name)?.Placement ?? Placement.Resident;
}

/// <summary>
/// The expert cache of a mixture of experts under a budget: every tensor but the routed experts resident (attention,
/// norms, routers, shared experts), and <see cref="SlotsPerLayer"/> experts of each layer held at a time in
/// <see cref="CacheBytes"/> (slots of <see cref="ExpertBytes"/>: one expert's gate, up and down).
/// </summary>
/// <param name="PredictedHitRate">The share of routed experts the cache is expected to hold when asked (the estimate says how it was made in <paramref name="HitRateNote"/>).</param>
/// <param name="ReadBytesPerToken">Expected bytes read from storage per generated token: misses × expert bytes.</param>
public sealed record ExpertPlan(long CacheBytes, int SlotsPerLayer, long ExpertBytes, ExpertPolicy Policy,
    double PredictedHitRate, string HitRateNote, long ReadBytesPerToken);
