using FitLM.Adapters;
using FitLM.Model;

namespace FitLM.Training;

/// <summary>MeZO's settings: the perturbation size ε, the learning rate, weight decay and the seed of the directions.</summary>
public sealed record MezoOptions
{
    /// <summary>ε of the finite difference (the paper's 1e-3).</summary>
    public float Epsilon { get; init; } = 1e-3f;
    public float LearningRate { get; init; } = 1e-4f;
    public int WarmupSteps { get; init; }
    public bool Cosine { get; init; }
    public int TotalSteps { get; init; } = 1;
    public float WeightDecay { get; init; }
    public int Seed { get; init; }
}

/// <summary>
/// MeZO (Malladi et al., 2023): zeroth-order SGD with SPSA. Each step draws a random direction z from a seed,
/// measures the loss at θ + εz and θ − εz (perturbing the parameters in place: +εz, −2εz, then +εz back) and moves
/// θ by −lr · (L₊ − L₋)/(2ε) · z, regenerating z from the same seed each time instead of storing it. Only forward
/// passes run, so training needs the memory of inference plus the parameters. The loss reported for a step is
/// (L₊ + L₋)/2, the estimate of the loss at θ before the update. One implementation over a list of parameters
/// (<see cref="MezoPerturbation"/>) trains either a LoRA adapter's A and B, or every weight of a resident
/// F32/F16/BF16 model (<see cref="Full"/>, `--mezo-full`).
/// </summary>
public sealed class MezoTrainer : IFinetuneMethod
{
    /// <summary>The adapter trained; null when the model's own weights are (<see cref="ModelWeights"/>).</summary>
    public LoraAdapter? Adapter { get; }
    /// <summary>The model's weights when they are what is trained (<see cref="Full"/>); null for an adapter.</summary>
    public FullModelWeights? ModelWeights { get; }
    private readonly InferenceLoss _loss;
    public MezoOptions Options { get; }
    public long StepsDone { get; set; }
    public IReadOnlyDictionary<string, float[]> OptimizerState { get; } = new Dictionary<string, float[]>();
    /// <summary>The last step's projected gradient (L₊ − L₋)/(2ε).</summary>
    public double LastProjectedGradient { get; private set; }
    /// <summary>
    /// Of the values rounded to F16/BF16 (full MeZO on such a model), the fraction the last update left unchanged:
    /// an update below half a unit in the last place vanishes. 0 when nothing is rounded.
    /// </summary>
    public double LastVanishedFraction { get; private set; }

    private readonly LearningRateSchedule _schedule;
    private readonly MezoPerturbation _moves;

    /// <summary>MeZO on the A and B of <paramref name="adapter"/>'s pairs; the model's weights stay frozen.</summary>
    public MezoTrainer(ModelConfig config, IWeightProvider weights, LoraAdapter adapter, int maxTokens, MezoOptions options)
        : this(new InferenceLoss(config, weights, adapter, maxTokens), adapter, null, options)
    {
    }

    private MezoTrainer(InferenceLoss loss, LoraAdapter? adapter, FullModelWeights? full, MezoOptions options)
    {
        if (!(options.LearningRate > 0) || !float.IsFinite(options.LearningRate)) throw new FitLMException($"the learning rate must be a positive number (got {options.LearningRate})");
        if (!(options.Epsilon > 0) || !float.IsFinite(options.Epsilon)) throw new FitLMException($"MeZO's epsilon must be a positive number (got {options.Epsilon})");
        Adapter = adapter;
        ModelWeights = full;
        Options = options;
        _loss = loss;
        IReadOnlyList<MezoParameter> parameters = full?.Parameters
            ?? adapter!.Pairs.SelectMany(p => new MezoParameter[] { new ArrayParameter(p.Name + ".lora_a", p.A), new ArrayParameter(p.Name + ".lora_b", p.B) }).ToList();
        if (parameters.Count == 0) throw new FitLMException("the adapter matches no matrix of this model: nothing to train");
        _moves = new MezoPerturbation(parameters);
        _schedule = new LearningRateSchedule(options.LearningRate, options.WarmupSteps, options.TotalSteps, options.Cosine);
    }

    /// <summary>
    /// MeZO on every weight of <paramref name="source"/> (`--mezo-full`), which <paramref name="weights"/> must hold
    /// resident in F32, F16 or BF16; refused otherwise with one line saying what to do.
    /// </summary>
    public static MezoTrainer Full(IModelSource source, IWeightProvider weights, int maxTokens, MezoOptions options)
    {
        var full = FullModelWeights.Of(source, weights);
        return new MezoTrainer(new InferenceLoss(source.Config, weights, null, maxTokens), null, full, options);
    }

    /// <summary>The summed loss of <paramref name="batch"/> at the current parameters, on the inference graph MeZO steps with.</summary>
    public double EvaluateLoss(TrainingBatch batch, CancellationToken ct = default) => _loss.Loss(batch, ct);

    /// <summary>Numbers trained.</summary>
    public long ParameterCount => _moves.Elements;

    public double Step(IReadOnlyList<TrainingBatch> microBatches, CancellationToken ct = default)
    {
        int targets = microBatches.Sum(b => b.TargetCount);
        if (targets == 0) throw new FitLMException("the training batch has no token to predict");
        ulong seed = DirectionSeed(Options.Seed, StepsDone);
        float eps = Options.Epsilon;
        _moves.Move(seed, 0, eps);
        double plus = Loss(microBatches, ct) / targets;
        _moves.Move(seed, eps, -eps);
        double minus = Loss(microBatches, ct) / targets;
        _moves.Move(seed, -eps, 0); // back to θ (F32: up to float rounding, as the paper's implementation)
        double loss = (plus + minus) / 2;
        if (!double.IsFinite(plus) || !double.IsFinite(minus)) return double.NaN;
        LastProjectedGradient = (plus - minus) / (2 * eps);
        float lr = _schedule.At(StepsDone);
        var (unchanged, rounded) = _moves.Update(seed, 1f - lr * Options.WeightDecay, (float)(-lr * LastProjectedGradient));
        LastVanishedFraction = rounded == 0 ? 0 : unchanged / (double)rounded;
        StepsDone++;
        return loss;
    }

    private double Loss(IReadOnlyList<TrainingBatch> microBatches, CancellationToken ct)
    {
        double sum = 0;
        foreach (var b in microBatches) sum += _loss.Loss(b, ct);
        return sum;
    }

    /// <summary>
    /// The direction z of step <paramref name="step"/>, one array per parameter: A then B of each pair of
    /// the adapter's pairs (A then B of each), or the model's tensors in file order (for tests).
    /// </summary>
    internal float[][] Direction(long step) => _moves.Direction(DirectionSeed(Options.Seed, step));

    /// <summary>Moves the parameters from θ + <paramref name="from"/>·z to θ + <paramref name="to"/>·z with the direction of <paramref name="step"/> (for tests).</summary>
    internal void Perturb(long step, float from, float to) => _moves.Move(DirectionSeed(Options.Seed, step), from, to);

    /// <summary>One seed per (run seed, step): SplitMix64 of both, so resumed runs draw the same directions.</summary>
    internal static ulong DirectionSeed(int runSeed, long step) => GaussianStream.Mix((ulong)(uint)runSeed * 0x9E3779B97F4A7C15UL ^ (ulong)step);
}
