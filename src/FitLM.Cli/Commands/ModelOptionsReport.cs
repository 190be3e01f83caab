using FitLM.Model;

namespace FitLM.Cli.Commands;

/// <summary>`fitlm info`'s lines for the options only some families have: a mixture of experts, Gemma's attention, Phi-3's fused projections.</summary>
internal static class ModelOptionsReport
{
    public static void Write(TextWriter o, ModelConfig c)
    {
        if (c.IsMoe)
        {
            o.WriteLine($"experts:        {c.ExpertCount} routed, {c.ExpertsUsed} used per token, expert FFN {c.ExpertFfnDim}, " +
                $"shared expert {(c.SharedExpertFfnDim > 0 ? c.SharedExpertFfnDim.ToString() : "none")}, " +
                $"chosen weights {(c.ExpertWeightsNorm ? "renormalized to sum to 1" : "not renormalized")}");
        }
        if (c.SlidingWindow > 0)
            o.WriteLine($"sliding window: {c.SlidingWindow} tokens, " +
                (c.SlidingPeriod <= 1 ? "every layer" : $"period {c.SlidingPeriod} ({c.SlidingPeriod - 1} sliding layer{(c.SlidingPeriod > 2 ? "s" : "")}, then a global one)") +
                (c.RopeThetaSliding > 0 ? $", sliding RoPE base {c.RopeThetaSliding}" : ""));
        if (c.AttentionSoftcap > 0 || c.FinalSoftcap > 0)
            o.WriteLine($"soft-caps:      attention {Cap(c.AttentionSoftcap)}, final logits {Cap(c.FinalSoftcap)}");
        if (c.EmbeddingScale != 1f || c.PostNorms || c.AttentionScale > 0)
            o.WriteLine($"gemma:          embedding scale {c.EmbeddingScale:G4}, post-norms {(c.PostNorms ? "yes" : "no")}, " +
                $"attention scale {(c.AttentionScale > 0 ? c.AttentionScale.ToString("G4") : "1/sqrt(head dim)")}");
        if (c.FusedQkv || c.FusedGateUp)
            o.WriteLine($"fused:          qkv {(c.FusedQkv ? "yes" : "no")}, gate+up {(c.FusedGateUp ? "yes" : "no")}");
    }

    private static string Cap(float cap) => cap > 0 ? cap.ToString("G4") : "none";
}
