using FitLM.Tensors;

namespace FitLM.Model;

/// <summary>Where the model graph gets its weights. The planner picks the implementation from the budget.</summary>
public interface IWeightProvider : IDisposable
{
    IMatrix Matrix(string name);
    /// <summary>A small tensor (norm weight, bias) as floats.</summary>
    float[] Vector(string name);
    bool Has(string name);
    /// <summary>Bytes of weights this provider holds in memory.</summary>
    long ResidentBytes { get; }

    /// <summary>Layer <paramref name="layer"/>'s feed-forward block: dense (fused for Phi-3) or a mixture of experts, unless the provider bundles neurons.</summary>
    IFeedForward FeedForward(int layer, ModelConfig config) => FeedForwards.Create(this, layer, config);

    /// <summary>Layer <paramref name="layer"/>'s routed experts: rows of the stacked tensors in memory, unless the provider caches experts.</summary>
    IExpertWeights Experts(int layer, ModelConfig config) => new StackedExperts(
        Matrix($"blk.{layer}.ffn_gate_exps.weight"), Matrix($"blk.{layer}.ffn_up_exps.weight"), Matrix($"blk.{layer}.ffn_down_exps.weight"), config);

    /// <summary>
    /// Parameters the weights stand for, or null to count the source's tensors: a stacked model's are its
    /// matrices' logical shapes, not the sizes of its block tensors.
    /// </summary>
    long? Parameters => null;

    /// <summary>Lines this provider reports after a run (FFN sparsity statistics, stack blocks loaded); none by default.</summary>
    IEnumerable<string> Report(ModelConfig config) => [];

    /// <summary>
    /// Resizes the weights to <paramref name="weightBytes"/> while the model runs and returns the bytes now loaded;
    /// only a provider whose size can move (BitStack) implements it.
    /// </summary>
    long Resize(long weightBytes) => throw new FitLMException("only a stacked (BitStack) model can be resized (fitlm compress makes one)");
}
