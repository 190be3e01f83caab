using FitLM.Adaptation;
using Xunit;

namespace FitLM.Tests.Adaptation;

/// <summary>The governor's policy with levers that only count: order, coalescing, the floor said once, a failed grow.</summary>
public class MemoryGovernorTests
{
    /// <summary>A lever holding <see cref="Held"/> bytes in steps of <see cref="Step"/>, down to <see cref="Floor"/>, up to <see cref="Top"/>.</summary>
    private sealed class CountingLever(string name, long held, long step, long floor, Model model) : IMemoryLever
    {
        public long Held = held, Step = step, Floor = floor, Top = held;
        public bool FailGrow;
        public string? Shrink(long budget)
        {
            if (Held - Step < Floor) return null;
            Held -= Step;
            model.Log.Add($"{name}-");
            return $"{name} -{Step}";
        }

        public string? Grow(long budget)
        {
            if (FailGrow) throw new FitLMException($"{name}: read error");
            string? change = null;
            while (Held + Step <= Top && model.Total + Step <= budget)
            {
                Held += Step;
                model.Log.Add($"{name}+");
                change = $"{name} +{Step}";
            }
            return change;
        }
    }

    private sealed class Model
    {
        public readonly List<string> Log = [];
        public readonly List<CountingLever> Levers = [];
        public long Base = 100;
        public long Total => Base + Levers.Sum(l => l.Held);
        public bool Fits(long budget) => Total <= budget;
    }

    private static (MemoryGovernor Governor, Model Model, CountingLever A, CountingLever B) Make()
    {
        var m = new Model();
        var a = new CountingLever("a", 100, 10, 50, m);
        var b = new CountingLever("b", 100, 25, 0, m);
        m.Levers.AddRange([a, b]);
        var g = new MemoryGovernor(300, m.Fits, growHeadroom: 0);
        g.Add(a);
        g.Add(b);
        return (g, m, a, b);
    }

    [Fact]
    public void ShrinksCheapestFirstOneStepAtATimeUntilItFits()
    {
        var (g, m, a, b) = Make();
        g.Request(240);
        var adaptation = g.Apply()!;
        // 300 → 240: lever a gives all it has (100 → 50, 60 > 50), only then b one step past the need.
        Assert.Equal(["a-", "a-", "a-", "a-", "a-", "b-"], m.Log);
        Assert.Equal(225, m.Total);
        Assert.Equal(240, g.Budget);
        Assert.Null(adaptation.Note);
        Assert.Equal(6, adaptation.Changes.Count);
        Assert.Contains("budget", adaptation.ToString());
    }

    [Fact]
    public void GrowsInTheReverseOrder()
    {
        var (g, m, a, b) = Make();
        g.Request(200);
        g.Apply();
        m.Log.Clear();
        g.Request(1000);
        g.Apply();
        Assert.Equal("b+", m.Log[0]); // the lever pulled last comes back first
        Assert.Equal((100L, 100L), (a.Held, b.Held));
    }

    [Fact]
    public void CoalescesRequestsMadeBetweenTwoPasses()
    {
        var (g, m, _, _) = Make();
        g.Request(250);
        g.Request(180);
        g.Request(260);
        Assert.True(g.Pending);
        var adaptation = g.Apply()!;
        Assert.Equal((300L, 260L), (adaptation.OldBudget, adaptation.NewBudget));
        Assert.Equal(1, g.Count);
        Assert.Null(g.Apply()); // nothing pending
        Assert.False(g.Pending);
    }

    [Fact]
    public void BelowTheSmallestPlanKeepsRunningAndSaysSoOnce()
    {
        var (g, m, a, b) = Make();
        g.Request(120); // the floor is 100 + 50 + 0 = 150
        var first = g.Apply()!;
        Assert.Contains("below the smallest plan", first.Note);
        Assert.Equal((50L, 0L), (a.Held, b.Held));
        g.Request(110);
        var second = g.Apply()!;
        Assert.Null(second.Note); // said once, not at every change
        g.Request(400);
        g.Apply();
        g.Request(120);
        Assert.Contains("below the smallest plan", g.Apply()!.Note); // fitted in between: said again
    }

    [Fact]
    public void AReadErrorWhileGrowingLeavesTheLeverWhereItIsWithOneWarning()
    {
        var (g, m, a, b) = Make();
        g.Request(200);
        g.Apply();
        long held = b.Held;
        b.FailGrow = true;
        g.Request(1000);
        var adaptation = g.Apply()!;
        Assert.Contains("could not grow", adaptation.Note);
        Assert.Equal(held, b.Held);
        Assert.Equal(100, a.Held); // the other lever still grew
        g.Request(200);
        g.Apply();
        g.Request(900);
        Assert.Null(g.Apply()!.Note); // warned once
    }

    [Fact]
    public void ABudgetThatStillFitsIsNoAdaptation()
    {
        var (g, m, _, _) = Make();
        int events = 0;
        g.Adapted += _ => events++;
        g.Request(280); // the model holds 100 + 100 + 100 = 300: this one adapts
        Assert.NotEmpty(g.Apply()!.Changes);
        g.Request(285); // it holds 280 now: fits, and no lever can take a step of 10 back
        var a = g.Apply()!;
        Assert.Empty(a.Changes);
        Assert.Equal(285, g.Budget);
        Assert.Equal((1, 1), (events, g.Count));
    }

    [Fact]
    public void GrowingLeavesAHeadroomSoAWobbleDoesNotUndoAShrink()
    {
        var m = new Model();
        var a = new CountingLever("a", 1000, 100, 0, m);
        m.Levers.Add(a);
        var g = new MemoryGovernor(1100, m.Fits, growHeadroom: 0);
        g.Add(a);
        g.Request(1000); // holds 1100: one step down
        g.Apply();
        Assert.Equal(900, a.Held);
        g.Request(1040); // 4% more: the step back would leave less than 5% free
        g.Apply();
        Assert.Equal(900, a.Held);
        g.Request(1300);
        g.Apply();
        Assert.Equal(1000, a.Held); // back to the top, 1100 of 1300
    }

    [Fact]
    public void ABudgetOfZeroIsRefused() =>
        Assert.Contains("out of range", Assert.Throws<FitLMException>(() => Make().Governor.Request(0)).Message);
}
