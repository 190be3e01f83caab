using FitLM.Memory;
using FitLM.Model;
using FitLM.Weights;
using Xunit;

namespace FitLM.Tests.Memory;

/// <summary>Planner.Replace: the placement for a new budget while the model runs, everything else kept.</summary>
public class PlannerReplaceTests
{
    private const long Runtime = 64L << 20;

    private static string[] Streamed(MemoryPlan p) =>
        p.Tensors.Where(t => t.Placement == Placement.Streamed).Select(t => t.Tensor.Name).Order(StringComparer.Ordinal).ToArray();

    [Fact]
    public void ReplaceChoosesWhatPlanChoosesAtThatBudget()
    {
        using var src = ModelSource.Open(TestPaths.DemoModel);
        var options = new Planner.Options { BudgetBytes = 1L << 40, Context = 128, RuntimeBytes = Runtime };
        var loaded = Planner.Plan(src, options);
        Assert.False(loaded.Streams);
        foreach (double share in new[] { 0.5, 0.75, 0.9, 1.0 })
        {
            long budget = loaded.TotalBytes - (long)(loaded.ResidentWeightBytes * (1 - share));
            var (replaced, below) = Planner.Replace(loaded, src, budget);
            var planned = Planner.Plan(src, options with { BudgetBytes = budget });
            Assert.False(below);
            Assert.Equal(Streamed(planned), Streamed(replaced));
            Assert.Equal(planned.StreamBufferBytes, replaced.StreamBufferBytes);
            Assert.Equal(budget, replaced.BudgetBytes);
            Assert.True(replaced.TotalBytes <= budget);
            // Everything but the placement is the current plan's.
            Assert.Equal(loaded.KvBytes, replaced.KvBytes);
            Assert.Equal(loaded.ScratchBytes, replaced.ScratchBytes);
            Assert.Equal(loaded.RuntimeBytes, replaced.RuntimeBytes);
            Assert.Equal(loaded.Context, replaced.Context);
        }
    }

    [Fact]
    public void ReplaceKeepsTheFixedPartsOfAPlanMadeWithOtherOptions()
    {
        using var src = ModelSource.Open(TestPaths.DemoModel);
        // A batch and logit rows Replace cannot see: its plan still counts the current scratch.
        var loaded = Planner.Plan(src, new Planner.Options { BudgetBytes = 1L << 40, Context = 256, MaxBatch = 32, LogitRows = 64, RuntimeBytes = Runtime, HostBytes = 3 << 20 });
        long budget = loaded.TotalBytes - loaded.ResidentWeightBytes / 2;
        var (replaced, below) = Planner.Replace(loaded, src, budget);
        Assert.False(below);
        Assert.True(replaced.Streams);
        Assert.Equal(loaded.ScratchBytes, replaced.ScratchBytes);
        Assert.Equal(loaded.RuntimeBytes, replaced.RuntimeBytes);
        Assert.True(replaced.TotalBytes <= budget, $"{replaced.TotalBytes} > {budget}");
        // Growing back to the load's budget puts everything back in memory.
        var (back, _) = Planner.Replace(replaced, src, loaded.BudgetBytes);
        Assert.Empty(Streamed(back));
        Assert.Equal(0, back.StreamBufferBytes);
    }

    [Fact]
    public void ABudgetBelowTheSmallestPlanGivesTheSmallestPlanAndSaysSo()
    {
        using var src = ModelSource.Open(TestPaths.DemoModel);
        var loaded = Planner.Plan(src, new Planner.Options { BudgetBytes = 1L << 40, Context = 128, RuntimeBytes = Runtime });
        var (plan, below) = Planner.Replace(loaded, src, 16L << 20);
        Assert.True(below);
        Assert.Equal(16L << 20, plan.BudgetBytes);
        Assert.DoesNotContain(plan.Tensors, t => t.Placement == Placement.Resident && t.Tensor.Shape.Length == 2);
        Assert.True(plan.TotalBytes > plan.BudgetBytes);
        Assert.Equal(loaded.KvBytes, plan.KvBytes);
    }
}
