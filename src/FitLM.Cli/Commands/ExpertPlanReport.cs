using FitLM.Memory;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Weights;

namespace FitLM.Cli.Commands;

/// <summary>`fitlm plan`'s lines and JSON fields for a mixture of experts' expert cache (docs/moe.md).</summary>
internal static class ExpertPlanReport
{
    /// <summary>The policy as --expert-policy names it: lru, frequency, predict, predict-lru, none.</summary>
    public static string PolicyName(ExpertPolicy p) => p switch
    {
        ExpertPolicy.PredictLru => "predict-lru",
        _ => p.ToString().ToLowerInvariant(),
    };

    public static void Write(TextWriter o, ExpertPlan e, ModelConfig c)
    {
        o.WriteLine($"expert cache: {e.SlotsPerLayer} of {c.ExpertCount} experts per layer held ({c.ExpertsUsed} run per token), " +
            $"{ProcessMemory.Format(e.CacheBytes)} in slots of {ProcessMemory.Format(e.ExpertBytes)} (one expert's gate, up and down), policy {PolicyName(e.Policy)}");
        o.WriteLine($"predicted hit rate: {e.PredictedHitRate * 100:F1}% ({e.HitRateNote}); experts read per token: {ProcessMemory.Format(e.ReadBytesPerToken)}");
    }

    public static Dictionary<string, object?> Json(ExpertPlan e, ModelConfig c) => new()
    {
        ["slots_per_layer"] = e.SlotsPerLayer,
        ["expert_count"] = c.ExpertCount,
        ["experts_used"] = c.ExpertsUsed,
        ["cache_bytes"] = e.CacheBytes,
        ["expert_bytes"] = e.ExpertBytes,
        ["policy"] = PolicyName(e.Policy),
        ["predicted_hit_rate"] = e.PredictedHitRate,
        ["hit_rate_note"] = e.HitRateNote,
        ["read_bytes_per_token"] = e.ReadBytesPerToken,
    };
}
