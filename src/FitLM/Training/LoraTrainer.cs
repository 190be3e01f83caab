using FitLM.Adapters;
using FitLM.Model;

namespace FitLM.Training;

/// <summary>How one optimizer step is made: learning rate, schedule, clipping and weight decay.</summary>
public sealed record OptimizerOptions
{
    public float LearningRate { get; init; } = 1e-3f;
    public int WarmupSteps { get; init; }
    public bool Cosine { get; init; } = true;
    /// <summary>Clip the global gradient L2 norm to this (0: no clipping).</summary>
    public float Clip { get; init; } = 1f;
    public float WeightDecay { get; init; }
    public int TotalSteps { get; init; } = 1;
}

/// <summary>
/// LoRA training: the graph's loss and gradients over the micro-batches of a step (gradient accumulation: the
/// gradients of all micro-batches are summed, scaled so that the step's loss is the mean over all its targets),
/// global-norm clipping, then AdamW. Base weights stay frozen in their stored type.
/// </summary>
public sealed class LoraTrainer : IFinetuneMethod
{
    public TrainingGraph Graph { get; }
    public LoraAdapter Adapter { get; }
    public AdamW Optimizer { get; }
    public LearningRateSchedule Schedule { get; }
    public OptimizerOptions Options { get; }
    /// <summary>The gradient's global L2 norm of the last step, before clipping.</summary>
    public double LastGradientNorm { get; private set; }

    private readonly List<(float[] Param, float[] Grad)> _tensors = [];
    private readonly Dictionary<string, float[]> _state = new(StringComparer.Ordinal);

    public long StepsDone { get => Optimizer.Step; set => Optimizer.Step = value; }
    public IReadOnlyDictionary<string, float[]> OptimizerState => _state;

    public LoraTrainer(ModelConfig config, IWeightProvider weights, LoraAdapter adapter, int maxTokens, int segmentLayers, OptimizerOptions options)
    {
        if (options.LearningRate <= 0 || !float.IsFinite(options.LearningRate)) throw new FitLMException($"the learning rate must be a positive number (got {options.LearningRate})");
        Adapter = adapter;
        Options = options;
        Graph = new TrainingGraph(config, weights, adapter, maxTokens, segmentLayers);
        if (Graph.Trainable.Count == 0) throw new FitLMException("the adapter matches no matrix of this model: nothing to train");
        foreach (var t in Graph.Trainable)
        {
            _tensors.Add((t.Pair.A, t.GradA));
            _tensors.Add((t.Pair.B, t.GradB));
        }
        Optimizer = new AdamW(_tensors.Select(t => t.Param.Length)) { WeightDecay = options.WeightDecay };
        for (int i = 0; i < Graph.Trainable.Count; i++)
            for (int ab = 0; ab < 2; ab++)
            {
                string name = Graph.Trainable[i].Pair.Name + (ab == 0 ? ".lora_a" : ".lora_b");
                var (m, v) = Optimizer.Moments[2 * i + ab];
                _state[name + ".adam_m"] = m;
                _state[name + ".adam_v"] = v;
            }
        Schedule = new LearningRateSchedule(options.LearningRate, options.WarmupSteps, options.TotalSteps, options.Cosine);
    }

    public double EvaluateLoss(TrainingBatch batch, CancellationToken ct = default) => Graph.Loss(batch, ct);

    /// <summary>Clears every gradient.</summary>
    public void ZeroGradients()
    {
        foreach (var (_, g) in _tensors) Array.Clear(g);
    }

    /// <summary>
    /// Sums the gradients of the mean loss over all <paramref name="microBatches"/> (without updating) and returns
    /// that mean loss. <see cref="Step"/> calls it; tests call it to compare gradients.
    /// </summary>
    public double ComputeGradients(IReadOnlyList<TrainingBatch> microBatches, CancellationToken ct = default)
    {
        ZeroGradients();
        int targets = microBatches.Sum(b => b.TargetCount);
        if (targets == 0) throw new FitLMException("the training batch has no token to predict");
        double loss = 0;
        foreach (var b in microBatches) loss += Graph.LossAndGradients(b, 1f / targets, ct);
        return loss / targets;
    }

    /// <summary>One optimizer step; returns the mean loss computed before the update.</summary>
    public double Step(IReadOnlyList<TrainingBatch> microBatches, CancellationToken ct = default)
    {
        double loss = ComputeGradients(microBatches, ct);
        if (!double.IsFinite(loss)) return loss; // the caller stops and keeps its last good checkpoint
        double sq = 0;
        foreach (var (_, g) in _tensors) sq += System.Numerics.Tensors.TensorPrimitives.SumOfSquares(g);
        LastGradientNorm = Math.Sqrt(sq);
        if (!double.IsFinite(LastGradientNorm)) return double.NaN;
        if (Options.Clip > 0 && LastGradientNorm > Options.Clip)
        {
            float k = (float)(Options.Clip / (LastGradientNorm + 1e-6));
            foreach (var (_, g) in _tensors) System.Numerics.Tensors.TensorPrimitives.Multiply(g, k, g);
        }
        Optimizer.Update(_tensors, Schedule.At(Optimizer.Step));
        return loss;
    }
}
