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
/// (L₊ + L₋)/2, the estimate of the loss at θ before the update.
/// </summary>
public sealed class MezoTrainer : IFinetuneMethod
{
    public LoraAdapter Adapter { get; }
    public TrainingGraph Graph { get; }
    public MezoOptions Options { get; }
    public long StepsDone { get; set; }
    public IReadOnlyDictionary<string, float[]> OptimizerState { get; } = new Dictionary<string, float[]>();
    /// <summary>The last step's projected gradient (L₊ − L₋)/(2ε).</summary>
    public double LastProjectedGradient { get; private set; }

    private readonly LearningRateSchedule _schedule;
    private readonly float[][] _parameters;

    public MezoTrainer(ModelConfig config, IWeightProvider weights, LoraAdapter adapter, int maxTokens, MezoOptions options)
    {
        if (!(options.LearningRate > 0) || !float.IsFinite(options.LearningRate)) throw new FitLMException($"the learning rate must be a positive number (got {options.LearningRate})");
        if (!(options.Epsilon > 0) || !float.IsFinite(options.Epsilon)) throw new FitLMException($"MeZO's epsilon must be a positive number (got {options.Epsilon})");
        Adapter = adapter;
        Options = options;
        Graph = new TrainingGraph(config, weights, adapter, maxTokens, backward: false);
        if (Graph.Trainable.Count == 0) throw new FitLMException("the adapter matches no matrix of this model: nothing to train");
        _parameters = Graph.Trainable.SelectMany(t => new[] { t.Pair.A, t.Pair.B }).ToArray();
        _schedule = new LearningRateSchedule(options.LearningRate, options.WarmupSteps, options.TotalSteps, options.Cosine);
    }

    public double Step(IReadOnlyList<TrainingBatch> microBatches, CancellationToken ct = default)
    {
        int targets = microBatches.Sum(b => b.TargetCount);
        if (targets == 0) throw new FitLMException("the training batch has no token to predict");
        ulong seed = DirectionSeed(Options.Seed, StepsDone);
        float eps = Options.Epsilon;
        Perturb(seed, eps);
        double plus = Loss(microBatches, ct) / targets;
        Perturb(seed, -2 * eps);
        double minus = Loss(microBatches, ct) / targets;
        Perturb(seed, eps); // back to θ (up to float rounding, as the paper's implementation)
        double loss = (plus + minus) / 2;
        if (!double.IsFinite(plus) || !double.IsFinite(minus)) return double.NaN;
        LastProjectedGradient = (plus - minus) / (2 * eps);
        float lr = _schedule.At(StepsDone);
        if (Options.WeightDecay != 0)
            foreach (var p in _parameters) System.Numerics.Tensors.TensorPrimitives.Multiply(p, 1f - lr * Options.WeightDecay, p);
        Perturb(seed, (float)(-lr * LastProjectedGradient));
        StepsDone++;
        return loss;
    }

    private double Loss(IReadOnlyList<TrainingBatch> microBatches, CancellationToken ct)
    {
        double sum = 0;
        foreach (var b in microBatches) sum += Graph.Loss(b, ct);
        return sum;
    }

    /// <summary>θ += scale · z, z ~ N(0, 1) drawn from <paramref name="seed"/> in parameter order (the same z every call).</summary>
    private void Perturb(ulong seed, float scale)
    {
        var rng = new GaussianStream(seed);
        foreach (var p in _parameters)
            for (int i = 0; i < p.Length; i++) p[i] += scale * rng.Next();
    }

    /// <summary>The direction z of step <paramref name="step"/>, in the order of <see cref="TrainingGraph.Trainable"/> (A then B of each pair): for tests.</summary>
    internal float[][] Direction(long step)
    {
        var rng = new GaussianStream(DirectionSeed(Options.Seed, step));
        var z = _parameters.Select(p => new float[p.Length]).ToArray();
        foreach (var d in z)
            for (int i = 0; i < d.Length; i++) d[i] = rng.Next();
        return z;
    }

    /// <summary>One seed per (run seed, step): SplitMix64 of both, so resumed runs draw the same directions.</summary>
    internal static ulong DirectionSeed(int runSeed, long step) => GaussianStream.Mix((ulong)(uint)runSeed * 0x9E3779B97F4A7C15UL ^ (ulong)step);

    /// <summary>Standard normal numbers from a seed: xoshiro256** bits, Box–Muller pairs. Cheap and reproducible across runs and machines.</summary>
    private struct GaussianStream
    {
        private ulong _s0, _s1, _s2, _s3;
        private float _spare;
        private bool _hasSpare;

        public GaussianStream(ulong seed)
        {
            _s0 = Mix(seed);
            _s1 = Mix(_s0);
            _s2 = Mix(_s1);
            _s3 = Mix(_s2);
            _spare = 0;
            _hasSpare = false;
        }

        internal static ulong Mix(ulong z)
        {
            z += 0x9E3779B97F4A7C15UL;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }

        private ulong NextBits()
        {
            ulong result = ulong.RotateLeft(_s1 * 5, 7) * 9;
            ulong t = _s1 << 17;
            _s2 ^= _s0;
            _s3 ^= _s1;
            _s1 ^= _s2;
            _s0 ^= _s3;
            _s2 ^= t;
            _s3 = ulong.RotateLeft(_s3, 45);
            return result;
        }

        public float Next()
        {
            if (_hasSpare)
            {
                _hasSpare = false;
                return _spare;
            }
            double u1 = ((NextBits() >> 11) + 1) * (1.0 / 9007199254740993.0); // (0, 1]
            double u2 = (NextBits() >> 11) * (1.0 / 9007199254740992.0);
            double r = Math.Sqrt(-2 * Math.Log(u1));
            _spare = (float)(r * Math.Sin(2 * Math.PI * u2));
            _hasSpare = true;
            return (float)(r * Math.Cos(2 * Math.PI * u2));
        }
    }
}
