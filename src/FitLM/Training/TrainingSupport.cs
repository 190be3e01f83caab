using FitLM.Adapters;
using FitLM.Model;

namespace FitLM.Training;

/// <summary>
/// Which models each fine-tuning method can train. MeZO runs the inference graph (<see cref="InferenceLoss"/>), so it
/// trains every family FitLM runs, through adapters on the matrices the family has; LoRA with backpropagation runs
/// <see cref="TrainingGraph"/>, which implements the plain pre-norm decoder (Llama, Mistral, Qwen2, Qwen3) and not yet
/// Gemma's extra norms and soft-capping, Phi-3's fused projections or mixtures of experts. Refused before anything
/// is written, in one line that says what would work.
/// </summary>
public static class TrainingSupport
{
    /// <summary>What the backpropagation graph lacks for this model, or null when it implements it.</summary>
    public static string? GraphLacks(ModelConfig c) =>
        c.IsMoe ? "a mixture of experts"
        : c.FusedQkv || c.FusedGateUp ? "fused Q/K/V and gate/up projections"
        : c.PostNorms || c.EmbeddingScale != 1f || c.NormWeightOffset != 0 ? "post-norms and scaled embeddings"
        : c.AttentionSoftcap > 0 || c.FinalSoftcap > 0 || c.SlidingWindow > 0 || c.AttentionScale > 0 ? "soft-capping, sliding-window attention or a custom attention scale"
        : c.QkNormWholeRow ? "whole-row Q/K norms"
        : null;

    /// <summary>Throws a FitLMException when <paramref name="options"/> cannot train the model of <paramref name="source"/>
    /// (<paramref name="initialAdapter"/>: the run starts from a given adapter, whose targets are its own).</summary>
    public static void Check(IModelSource source, FinetuneOptions options, bool initialAdapter)
    {
        var c = source.Config;
        if (options.Method == FinetuneMethod.Lora && GraphLacks(c) is { } lacks)
            throw new FitLMException($"{source.Path}: LoRA with backpropagation does not implement {lacks} ({c.Architecture}) yet; --method mezo trains this model");
        // An initial adapter's own targets are checked against the model as it loads.
        if (options.MezoFull || initialAdapter) return;
        // Phi-3's ffn_up holds gate and up together: not the [FFN × Dim] matrix an "up" adapter is made for.
        bool Has(string t) => source.Find($"blk.0.{LoraAdapter.TensorOf(t)}") != null && !(t == "up" && c.FusedGateUp);
        var missing = options.Targets.Where(t => !Has(t)).ToList();
        if (missing.Count == 0) return;
        var present = LoraAdapter.AllTargets.Where(Has).ToList();
        throw new FitLMException($"{source.Path}: {c.Architecture} has no {string.Join(", ", missing)} matrix to adapt" +
            (c.IsMoe ? " (its FFN is a mixture of experts)" : c.FusedQkv ? " (Q/K/V and gate/up are fused)" : "") +
            (present.Count > 0 ? $"; use --targets {string.Join(",", present)}" : ""));
    }
}
