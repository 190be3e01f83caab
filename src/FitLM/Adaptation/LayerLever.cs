using FitLM.Memory;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Weights;

namespace FitLM.Adaptation;

/// <summary>
/// Which layers are resident: moving a layer to streamed frees its bytes at once but costs reading it for every
/// token (the planner's choice for a smaller budget, <see cref="Planner.Replace"/>, carried out by
/// <see cref="StreamingWeights.ApplyPlacement"/>); restoring it reads it once. The most expensive model lever, so
/// the last pulled and the first restored.
/// </summary>
public sealed class LayerLever(StreamingWeights weights, IModelSource source, Func<MemoryPlan> plan, Action<MemoryPlan> setPlan) : IMemoryLever
{
    public string? Shrink(long budget) => Move(budget, shrink: true);

    public string? Grow(long budget) => Move(budget, shrink: false);

    private string? Move(long budget, bool shrink)
    {
        var current = plan();
        var (next, _) = Planner.Replace(current, source, budget);
        long before = current.ResidentWeightBytes, after = next.ResidentWeightBytes;
        if (shrink ? after >= before : after <= before) return null;
        string residentBefore = Resident();
        try
        {
            weights.ApplyPlacement(next.Tensors);
        }
        catch (FitLMException)
        {
            // A read error while growing: the units not read stay streamed, and the plan says what holds.
            setPlan(next with { Tensors = weights.PlacementNow(next.Tensors), StreamBufferBytes = 2 * weights.SlotBytes });
            throw;
        }
        setPlan(next);
        return $"resident {residentBefore} -> {Resident()} (weights {ProcessMemory.Format(before)} -> {ProcessMemory.Format(after)}, " +
            $"{ProcessMemory.Format(next.StreamedBytesPerToken)} read per token)";
    }

    /// <summary>"8 of 16 layers + head": what is in memory now.</summary>
    private string Resident() =>
        $"{Enumerable.Range(0, source.Config.Layers).Count(weights.IsLayerResident)} of {source.Config.Layers} layers" + (weights.IsHeadResident ? " + head" : "");
}
