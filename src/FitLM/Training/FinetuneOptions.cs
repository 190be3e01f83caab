using FitLM.Adapters;

namespace FitLM.Training;

/// <summary>
/// Everything a fine-tuning run is made of, apart from the model and the data: what `fitlm finetune` takes as
/// flags, and what a checkpoint saves so that a resumed run continues with the same settings.
/// </summary>
public sealed record FinetuneOptions
{
    public FinetuneMethod Method { get; init; } = FinetuneMethod.Lora;
    /// <summary>Tokens per training window (--ctx).</summary>
    public int Context { get; init; } = 256;
    /// <summary>Sequences per optimizer step (--batch); a fixed batch (--train-ids) brings its own.</summary>
    public int Batch { get; init; } = 4;
    /// <summary>Sequences per forward/backward (gradient accumulation over Batch / MicroBatch of them); 0: the whole batch.</summary>
    public int MicroBatch { get; init; }
    /// <summary>Optimizer steps (--steps); 0: from <see cref="Epochs"/>.</summary>
    public long Steps { get; init; }
    /// <summary>Passes over the training windows when <see cref="Steps"/> is 0 (0 too: one epoch).</summary>
    public double Epochs { get; init; }
    /// <summary>Seeds the new adapter's A, the data order and MeZO's perturbations.</summary>
    public int Seed { get; init; }
    public int Rank { get; init; } = 8;
    public float Alpha { get; init; } = 16;
    /// <summary>The projections adapted (short names, <see cref="LoraAdapter.AllTargets"/>).</summary>
    public IReadOnlyList<string> Targets { get; init; } = LoraAdapter.AllTargets;
    /// <summary>Layers per activation-checkpoint segment: -1 auto (⌈√layers⌉), 0 none (all layers kept), N.</summary>
    public int CheckpointLayers { get; init; } = -1;
    public float LearningRate { get; init; } = 1e-3f;
    public bool Cosine { get; init; } = true;
    public int WarmupSteps { get; init; }
    /// <summary>Global gradient-norm clip (0: none).</summary>
    public float Clip { get; init; } = 1f;
    public float WeightDecay { get; init; }
    /// <summary>MeZO's perturbation size ε.</summary>
    public float MezoEpsilon { get; init; } = 1e-3f;
    /// <summary>
    /// MeZO trains every weight of an F32/F16/BF16 GGUF model (--mezo-full) instead of a LoRA adapter; the output is
    /// OUT_DIR/model.gguf. The loaded model's own weights are trained in place: load it afresh for another run.
    /// </summary>
    public bool MezoFull { get; init; }
    /// <summary>Write a checkpoint every N steps (0: only when cancelled and at the end).</summary>
    public int SaveEvery { get; init; }
    /// <summary>Evaluate every N steps (0: only at the end; nothing without eval data).</summary>
    public int EvalEvery { get; init; }
    /// <summary>Evaluation windows used at most, so an evaluation takes seconds.</summary>
    public int EvalWindows { get; init; } = 16;

    /// <summary>Refuses settings no run can use, one line each, naming the flag.</summary>
    public void Validate()
    {
        if (Context < 2) throw new FitLMException($"--ctx {Context} is too small: a training window needs at least 2 tokens");
        if (Batch < 1) throw new FitLMException($"--batch {Batch} must be at least 1");
        if (MicroBatch < 0) throw new FitLMException($"--micro-batch {MicroBatch} must be at least 1");
        if (Steps < 0) throw new FitLMException($"--steps {Steps} must be at least 1");
        if (Epochs < 0 || !double.IsFinite(Epochs)) throw new FitLMException($"--epochs {Epochs} must be a positive number");
        if (Rank < 1) throw new FitLMException($"--rank {Rank} must be at least 1");
        if (!(Alpha > 0) || !float.IsFinite(Alpha)) throw new FitLMException($"--alpha {Alpha} must be a positive number");
        if (Targets.Count == 0) throw new FitLMException("--targets is empty (use any of q,k,v,o,gate,up,down)");
        foreach (var t in Targets) LoraAdapter.TensorOf(t);
        if (CheckpointLayers < -1) throw new FitLMException($"--checkpoint {CheckpointLayers} must be auto, none or a number of layers");
        if (!(LearningRate > 0) || !float.IsFinite(LearningRate)) throw new FitLMException($"--lr {LearningRate} must be a positive number");
        if (WarmupSteps < 0) throw new FitLMException($"--warmup {WarmupSteps} must be 0 or more");
        if (!(Clip >= 0) || !float.IsFinite(Clip)) throw new FitLMException($"--clip {Clip} must be 0 (none) or a positive number");
        if (!(WeightDecay >= 0) || !float.IsFinite(WeightDecay)) throw new FitLMException($"--weight-decay {WeightDecay} must be 0 or a positive number");
        if (!(MezoEpsilon > 0) || !float.IsFinite(MezoEpsilon)) throw new FitLMException($"--mezo-eps {MezoEpsilon} must be a positive number");
        if (MezoFull && Method != FinetuneMethod.Mezo) throw new FitLMException("--mezo-full trains all weights with MeZO; add --method mezo");
        if (SaveEvery < 0) throw new FitLMException($"--save-every {SaveEvery} must be 0 or more");
        if (EvalEvery < 0) throw new FitLMException($"--eval-every {EvalEvery} must be 0 or more");
        if (EvalWindows < 1) throw new FitLMException($"--eval-windows {EvalWindows} must be at least 1");
    }

    /// <summary>Layers per checkpoint segment for a model of <paramref name="layers"/> layers (0: no checkpointing).</summary>
    public int SegmentLayers(int layers) => CheckpointLayers switch
    {
        -1 => (int)Math.Ceiling(Math.Sqrt(layers)),
        0 => 0,
        var n => Math.Min(n, layers),
    };
}
