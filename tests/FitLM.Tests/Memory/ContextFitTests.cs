using FitLM.Model;
using Xunit;
using FitLM.Memory;

namespace FitLM.Tests.Memory;

/// <summary>With --memory and no -c, the context shrinks to what the budget holds instead of refusing the budget.</summary>
public sealed class ContextFitTests
{
    private static readonly long Runtime = 40L << 20;

    private static long MinimumFor(int context)
    {
        var e = Assert.Throws<BudgetTooSmallException>(() =>
            LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = context, MemoryBudget = 1 << 20, RuntimeBytes = Runtime }));
        Assert.Contains("give --memory", e.Message);
        return e.MinimumBytes;
    }

    [Fact]
    public void DefaultContextShrinksToFitTheBudgetButAnExplicitOneDoesNot()
    {
        int full;
        using (var probe = LanguageModel.Load(TestPaths.DemoModel, contextLength: 0)) full = probe.Transformer.MaxContext;
        long atFull = MinimumFor(full), at256 = MinimumFor(256);
        Assert.True(at256 < atFull, "a shorter context needs less memory");
        long budget = (at256 + atFull) / 2;

        using (var lm = LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { MemoryBudget = budget, RuntimeBytes = Runtime }))
        {
            Assert.True(lm.ContextChosenByBudget);
            Assert.InRange(lm.Transformer.MaxContext, 256, full / 2);
            Assert.True(lm.Plan.TotalBytes <= budget);
            var logits = new float[lm.Config.Vocab];
            lm.Transformer.Forward([1, 2, 3], 0, logits, 2);
            Assert.All(logits, v => Assert.True(float.IsFinite(v)));
        }
        using (var small = LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = 256, MemoryBudget = budget, RuntimeBytes = Runtime }))
            Assert.False(small.ContextChosenByBudget); // asked for
        var explicitContext = Assert.Throws<BudgetTooSmallException>(() =>
            LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = full, MemoryBudget = budget, RuntimeBytes = Runtime }));
        Assert.Equal(atFull, explicitContext.MinimumBytes);

        // Below what even 256 positions need: the error names the smallest budget.
        var tooSmall = Assert.Throws<BudgetTooSmallException>(() =>
            LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { MemoryBudget = at256 - 1, RuntimeBytes = Runtime }));
        Assert.Equal(at256, tooSmall.MinimumBytes);
    }
}
