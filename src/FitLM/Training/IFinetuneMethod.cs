using FitLM.Adapters;

namespace FitLM.Training;

/// <summary>
/// A way of training an adapter one step at a time (LoRA with backpropagation and AdamW, or MeZO's
/// forward-only estimate): what the fine-tuning loop drives, evaluates, checkpoints and resumes.
/// </summary>
public interface IFinetuneMethod
{
    /// <summary>The adapter being trained (its arrays are updated in place by every step); null when the method trains the model's own weights (<see cref="ModelWeights"/>).</summary>
    LoraAdapter? Adapter { get; }
    /// <summary>The model's weights when they are what is trained (full-weight MeZO, `--mezo-full`): written as OUT_DIR/model.gguf and in checkpoints; null for an adapter.</summary>
    FullModelWeights? ModelWeights => null;
    /// <summary>The summed next-token loss of <paramref name="batch"/> at the current parameters (evaluation on held-out text).</summary>
    double EvaluateLoss(TrainingBatch batch, CancellationToken ct = default);
    /// <summary>Steps taken so far; a resumed run sets it from its checkpoint.</summary>
    long StepsDone { get; set; }
    /// <summary>One step over the micro-batches of a batch; returns the mean loss computed before the update (NaN/∞: nothing was updated).</summary>
    double Step(IReadOnlyList<TrainingBatch> microBatches, CancellationToken ct = default);
    /// <summary>
    /// The optimizer's state beyond the adapter, by name (AdamW's moments; empty for MeZO, whose state is the
    /// step count and seed): a checkpoint saves these arrays and a resume copies them back in place.
    /// </summary>
    IReadOnlyDictionary<string, float[]> OptimizerState { get; }
}
