using FitLM.Adapters;
using FitLM.Model;

namespace FitLM.Training;

/// <summary>
/// The next-token loss computed by the inference graph itself (<see cref="Transformer"/> over a KV cache, the
/// adapter applied as `--lora` applies it), a chunk of positions at a time: what MeZO needs, in the memory of
/// `fitlm run` at the same context plus one chunk of logits. The training graph's forward would hold a whole
/// sequence's activations per layer (52 MiB for llama-0.8b at 256 tokens, measured 20% above `run`'s peak).
/// </summary>
public sealed class InferenceLoss
{
    /// <summary>Positions per forward call: 32 rows of logits (4 MiB for a 32000-token vocabulary).</summary>
    public const int Chunk = 32;

    private readonly Transformer _transformer;
    private readonly LoraWeights? _lora;
    private readonly float[] _logits;

    /// <param name="weights">The base weights (trained in place by full MeZO, or frozen).</param>
    /// <param name="adapter">The adapter being trained, applied live; null: the weights alone.</param>
    /// <param name="maxSequence">The longest sequence (the context the KV cache holds).</param>
    public InferenceLoss(ModelConfig config, IWeightProvider weights, LoraAdapter? adapter, int maxSequence)
    {
        _lora = adapter == null ? null : new LoraWeights(weights, [new ScaledAdapter(adapter)]);
        _transformer = new Transformer(config, (IWeightProvider?)_lora ?? weights, maxSequence, Chunk);
        _logits = new float[Chunk * config.Vocab];
    }

    /// <summary>Bytes this holds beyond the weights for sequences of <paramref name="maxSequence"/> tokens.</summary>
    public static long Bytes(ModelConfig c, int maxSequence) =>
        4L * Chunk * c.Vocab + 4L * Chunk * (3L * c.Dim + 2L * Math.Max(c.Dim, c.QDim) + c.QDim + 2L * c.KvDim + 2L * c.FfnDim)
        + 8L * maxSequence * c.Layers * c.KvDim;

    /// <summary>The summed next-token loss over the rows of <paramref name="batch"/> that have a target.</summary>
    public double Loss(TrainingBatch batch, CancellationToken ct = default)
    {
        _lora?.Refresh();
        int vocab = _transformer.Config.Vocab;
        double sum = 0;
        foreach (var (start, length) in batch.Sequences)
        {
            if (length > _transformer.MaxContext) throw new FitLMException($"a sequence of {length} tokens is longer than the context {_transformer.MaxContext}");
            for (int c0 = 0; c0 < length; c0 += Chunk)
            {
                ct.ThrowIfCancellationRequested();
                int n = Math.Min(Chunk, length - c0);
                _transformer.Forward(batch.Tokens.AsSpan(start + c0, n), c0, _logits, 0, ct);
                for (int t = 0; t < n; t++)
                {
                    int target = batch.Targets[start + c0 + t];
                    if (target < 0) continue;
                    sum -= Evaluation.Perplexity.LogSoftmaxAt(_logits.AsSpan(t * vocab, vocab), target);
                }
            }
        }
        return sum;
    }
}
