using FitLM.Adapters;
using FitLM.Memory;
using FitLM.Model;

namespace FitLM.Training;

/// <summary>How fine-tuning trains: LoRA with backpropagation and AdamW, or MeZO (forward passes only).</summary>
public enum FinetuneMethod { Lora, Mezo }

/// <summary>What the fine-tuning planner is asked: the run's shape and the budget (0: no budget).</summary>
public sealed record FinetunePlanRequest
{
    public FinetuneMethod Method { get; init; } = FinetuneMethod.Lora;
    public long BudgetBytes { get; init; }
    /// <summary>Tokens per sequence (--ctx).</summary>
    public int Context { get; init; } = 256;
    /// <summary>Sequences per optimizer step (--batch).</summary>
    public int Batch { get; init; } = 1;
    /// <summary>Sequences per forward/backward pass; 0: the planner chooses.</summary>
    public int MicroBatch { get; init; }
    /// <summary>Layers per checkpoint segment: null = auto, 0 = none (keep every layer's activations), N = a checkpoint every N layers.</summary>
    public int? SegmentLayers { get; init; }
    public int Rank { get; init; } = 8;
    public IReadOnlyList<string> Targets { get; init; } = LoraAdapter.AllTargets;
    /// <summary>What else the caller holds (training text and its tokens).</summary>
    public long DataBytes { get; init; }
    /// <summary>MeZO on every weight (--mezo-full): no adapter, and the weights must stay resident (they are trained in place).</summary>
    public bool MezoFull { get; init; }
}

/// <summary>
/// The plan of a fine-tuning run: micro-batch, checkpoint segments, and the memory of each part. The base weights'
/// placement (resident or streamed) is the inference planner's <see cref="WeightsPlan"/>, made with the training
/// parts counted as memory the host holds.
/// </summary>
public sealed record FinetunePlan
{
    public required int MicroBatch { get; init; }
    /// <summary>Layers per checkpoint segment (the model's layer count: no checkpointing).</summary>
    public required int SegmentLayers { get; init; }
    public required long ActivationBytes { get; init; }
    /// <summary>The adapter and what its optimizer keeps: parameters, gradients and AdamW's two moments (LoRA); parameters only (MeZO).</summary>
    public required long AdapterStateBytes { get; init; }
    public required long DataBytes { get; init; }
    /// <summary>What training adds to the process beyond its arrays (<see cref="FinetunePlanner.OverheadBytes"/>).</summary>
    public required long OverheadBytes { get; init; }
    public required MemoryPlan WeightsPlan { get; init; }
    public long TrainingBytes => ActivationBytes + AdapterStateBytes + DataBytes + OverheadBytes;
    /// <summary>The whole process: the weight plan counts the training parts as memory the host holds.</summary>
    public long TotalBytes => WeightsPlan.TotalBytes;
    /// <summary>The runtime's share of <see cref="WeightsPlan"/>'s RuntimeBytes (which includes the training parts).</summary>
    public long RuntimeBytes => WeightsPlan.RuntimeBytes - TrainingBytes;
    public bool Checkpointing(ModelConfig c) => SegmentLayers < c.Layers;
}

/// <summary>
/// Chooses how a fine-tuning run fits its budget. Preference, measured on pycoder-29m: weights resident over
/// streamed (a streamed step reads the weights three times); no checkpointing over checkpointing (one extra
/// forward, about +30% time per step); then the largest micro-batch that fits. The checkpointed form is the
/// segment length with the least memory, about √L layers (Chen et al.).
/// </summary>
public static class FinetunePlanner
{
    public static FinetunePlan Plan(string path, IModelSource source, FinetunePlanRequest r, LoadOptions load)
    {
        var c = source.Config;
        if (r.Batch < 1) throw new FitLMException($"--batch must be at least 1 (got {r.Batch})");
        if (r.Context < 2) throw new FitLMException($"--ctx must be at least 2 tokens (got {r.Context})");
        if (r.MicroBatch < 0 || r.MicroBatch > r.Batch) throw new FitLMException($"--micro-batch must be between 1 and --batch ({r.Batch})");
        if (r.SegmentLayers < 0) throw new FitLMException($"--checkpoint must be auto, none or a number of layers ≥ 1 (got {r.SegmentLayers})");
        long adapterState = AdapterStateBytes(c, r);
        long mezo = MezoInferenceBytes(source, r);
        var micros = r.MicroBatch > 0 ? [r.MicroBatch] : Enumerable.Range(1, r.Batch).Where(m => r.Batch % m == 0).OrderDescending().ToArray();
        int[] segments = r.Method == FinetuneMethod.Mezo ? [1]
            : r.SegmentLayers is { } s ? [s == 0 ? c.Layers : Math.Min(s, c.Layers)]
            : [c.Layers, LeastMemorySegment(c, r)];

        foreach (bool allowStreaming in r.MezoFull ? new[] { false } : new[] { false, true })
            foreach (int seg in segments)
                foreach (int micro in micros)
                {
                    long acts = ActivationBytes(c, r, micro, seg) + mezo;
                    var candidate = TryPlan(path, source, load, r, micro, seg, acts, adapterState);
                    if (candidate == null) continue;
                    if (!allowStreaming && candidate.WeightsPlan.Streams) continue;
                    return candidate;
                }
        if (r.MezoFull)
            throw new FitLMException($"--memory {r.BudgetBytes >> 20}MiB is too small for --mezo-full, which keeps every weight of {Path.GetFileName(path)} resident to train it; give a larger --memory, or train a LoRA adapter with MeZO (drop --mezo-full)");
        // Nothing fits: name the smallest run that would (the weight planner knows its own minimum).
        int minMicro = micros[^1];
        int minSeg = segments.MinBy(s => ActivationBytes(c, r, minMicro, s));
        long minActs = ActivationBytes(c, r, minMicro, minSeg) + mezo;
        long minimum;
        try
        {
            LanguageModel.PlanLoad(path, source, LoadOptionsFor(load, r, minActs + adapterState) with { MemoryBudget = 1 }, r.Context);
            minimum = 0;
        }
        catch (BudgetTooSmallException e)
        {
            minimum = e.MinimumBytes;
        }
        string need = minimum > 0 ? $"; the smallest plan (micro-batch {minMicro}, {Describe(c, minSeg)}, weights streamed) needs --memory {Math.Ceiling(minimum / (double)(1 << 20))}MiB" : "";
        throw new FitLMException($"--memory {r.BudgetBytes >> 20}MiB is too small to fine-tune {Path.GetFileName(path)} at --ctx {r.Context}{need}");
    }

    /// <summary>
    /// What MeZO's inference graph holds beyond <see cref="InferenceLoss.Bytes"/>: the transposed copy of B that
    /// applying a LoRA adapter keeps (4 bytes a B parameter), and a part measured but not yet explained, which grows
    /// with the model: MeZO peaked 7.4–9.3 MiB above its plan on pycoder-29m (17.5 MiB of weights) and 31.6 MiB above
    /// on llama-0.8b q4_0 (465 MiB), each with the B copy uncounted; 9 MiB + 3.5% of the weights covers both.
    /// </summary>
    public static long MezoInferenceBytes(IModelSource source, FinetunePlanRequest r)
    {
        if (r.Method != FinetuneMethod.Mezo) return 0;
        long weights = source.Tensors.Sum(t => t.ByteSize);
        long bCopy = 0;
        if (!r.MezoFull)
            foreach (var t in r.Targets)
                bCopy += 4L * r.Rank * LoraAdapter.ShapeOf(t, source.Config).Out * source.Config.Layers;
        return bCopy + (9L << 20) + weights * 35 / 1000;
    }

    /// <summary>"no checkpointing" or "a checkpoint every N layers".</summary>
    public static string Describe(ModelConfig c, int segmentLayers) =>
        segmentLayers >= c.Layers ? "no checkpointing" : $"a checkpoint every {segmentLayers} layer{(segmentLayers == 1 ? "" : "s")}";

    public static long ActivationBytes(ModelConfig c, FinetunePlanRequest r, int micro, int segmentLayers)
    {
        int tokens = micro * r.Context;
        if (r.Method == FinetuneMethod.Mezo) return InferenceLoss.Bytes(c, r.Context);
        return TrainingGraph.ActivationBytes(c, tokens, segmentLayers, r.Rank, r.Targets.ToArray());
    }

    /// <summary>LoRA: A and B with their gradients and two AdamW moments (4 floats each); MeZO: A and B only.</summary>
    public static long AdapterStateBytes(ModelConfig c, FinetunePlanRequest r)
    {
        if (r.MezoFull) return 0; // the weights are the parameters, counted as resident weights
        long parameters = 0;
        foreach (var t in r.Targets)
        {
            var (o, i) = LoraAdapter.ShapeOf(t, c);
            parameters += (long)r.Rank * (o + i);
        }
        parameters *= c.Layers;
        return 4 * parameters * (r.Method == FinetuneMethod.Lora ? 4 : 1);
    }

    private static int LeastMemorySegment(ModelConfig c, FinetunePlanRequest r) =>
        Enumerable.Range(1, c.Layers).MinBy(s => ActivationBytes(c, r, 1, s));

    private static FinetunePlan? TryPlan(string path, IModelSource source, LoadOptions load, FinetunePlanRequest r, int micro, int seg, long acts, long adapterState)
    {
        try
        {
            var (weights, _) = LanguageModel.PlanLoad(path, source, LoadOptionsFor(load, r, acts + adapterState), r.Context);
            return new FinetunePlan
            {
                MicroBatch = micro, SegmentLayers = seg, ActivationBytes = acts, AdapterStateBytes = adapterState,
                DataBytes = r.DataBytes, OverheadBytes = OverheadBytes(acts + adapterState), WeightsPlan = weights,
            };
        }
        catch (BudgetTooSmallException)
        {
            return null;
        }
    }

    /// <summary>
    /// What a training process holds beyond the arrays the plan counts: the training and file-writing code the JIT
    /// compiles, the managed heap's slack around the activation arrays, and the transient buffers of writing
    /// checkpoints (the peak comes while the adapter and checkpoint are written). Measured with /usr/bin/time -v and
    /// /proc against the arrays the plan counts: +1.7 MiB (pycoder-29m, resident, 130 MiB), +6.0 to +10.3 MiB
    /// (pycoder-29m streamed, 92–100 MiB, varying run to run), +10.0 MiB (llama-0.8b q4_0, 1 GiB, 210 MiB of
    /// training arrays); 12 MiB plus 2% of the training arrays covers all of them, and 4 MiB more the run-to-run
    /// variation of the same run's peak: at the demo model's smallest budget (106 MiB with 2 MiB here) repeated runs
    /// peaked at 101.5–103.4 MiB, and later at 101.9–102.1 with one run of 105.7 (e7c47c7) and 102.3–102.6 with runs of
    /// 106.2 and 106.3 (issue 15's head, whose code adds ~0.4 MiB): about one run in four lands ~4 MiB higher, cause
    /// not found; 2 MiB more keeps that run under the budget it names.
    /// </summary>
    public static long OverheadBytes(long trainingArrayBytes) => (16L << 20) + trainingArrayBytes / 50;

    /// <summary>The load options that give the base weights what the training parts leave of the budget.</summary>
    public static LoadOptions LoadOptionsFor(LoadOptions load, FinetunePlanRequest r, long trainingBytes) => load with
    {
        ContextLength = r.Context,
        MaxBatch = 1,
        HostBytes = load.HostBytes + trainingBytes + r.DataBytes + OverheadBytes(trainingBytes),
        MemoryBudget = load.MemoryBudget > 0 ? load.MemoryBudget : r.BudgetBytes,
    };
}
