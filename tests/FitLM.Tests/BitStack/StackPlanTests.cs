using FitLM.Compression;
using FitLM.Evaluation;
using FitLM.Model;
using FitLM.Tensors;
using Xunit;
using FitLM.Memory;
using FitLM.Weights;

namespace FitLM.Tests.BitStack;

/// <summary>What a stacked model's plan says: its size after resizes, its parameters, the bytes a token multiplies.</summary>
public class StackPlanTests
{
    private static StackFixture F => StackFixture.Shared;

    [Fact]
    public void ThePlanDescribesTheSizeAfterEveryResize()
    {
        using var lm = LanguageModel.Load(F.Stacked, new LoadOptions { ContextLength = 16, MaxBatch = 16, MemoryBudget = 1L << 40, RuntimeBytes = 64L << 20 });
        var w = (StackedWeights)lm.Weights;
        var layout = w.Layout!;
        int n = layout.Entries.Count, low = layout.BaseEntries + 2;
        var full = lm.Plan;
        Assert.Equal(n, full.Stack!.Entries);
        Assert.Equal(layout.BytesAt(n), full.Stack.WeightBytes);

        lm.Resize(layout.BytesAt(low));
        var small = lm.Plan;
        long dropped = layout.BlockBytesBetween(low, n);
        Assert.Equal(low, small.Stack!.Entries);
        Assert.Equal(w.WeightBytes, small.Stack.WeightBytes);
        Assert.Equal(full.Stack.WeightBytes - dropped, small.Stack.WeightBytes);
        Assert.Equal(full.ResidentWeightBytes - dropped, small.ResidentWeightBytes);
        Assert.Equal(full.TotalBytes - dropped, small.TotalBytes);
        Assert.Equal(w.CacheBytes, small.Stack.CacheBytes); // every matrix still has a block, so each keeps its cache
        // Runtime, KV cache and activations do not depend on the size.
        Assert.Equal((full.RuntimeBytes, full.KvBytes, full.ScratchBytes, full.BudgetBytes), (small.RuntimeBytes, small.KvBytes, small.ScratchBytes, small.BudgetBytes));

        // Resizing without the model (the weights' own call) is seen too; growing back restores the plan.
        w.ResizeEntries(n);
        var again = lm.Plan;
        Assert.Equal(full.Stack, again.Stack);
        Assert.Equal(full.TotalBytes, again.TotalBytes);
        Assert.Equal(full.Tensors.Select(t => t.Tensor.Name), again.Tensors.Select(t => t.Tensor.Name));

        // The planner's resize to a new budget: the plan names that budget.
        lm.Resize(layout.BytesAt(low));
        lm.ResizeToBudget(1L << 39);
        Assert.Equal(1L << 39, lm.Plan.BudgetBytes);
        Assert.Equal(n, lm.Plan.Stack!.Entries);
    }

    [Fact]
    public void PlanningWithoutLoadingChoosesWhatLoadingLoads()
    {
        using var src = StackFixture.Open(F.Stacked);
        var layout = StackLayout.Read(src);
        const long runtime = 64L << 20;
        var baseOptions = new LoadOptions { ContextLength = 32, RuntimeBytes = runtime };
        var whole = StackPlanner.Plan(src, layout, baseOptions with { MemoryBudget = 1L << 40 }, 32);
        Assert.Equal(layout.Entries.Count, whole.Stack!.Entries);
        int mid = (layout.BaseEntries + layout.Entries.Count) / 2;
        long midBudget = whole.TotalBytes - layout.BlockBytesBetween(mid, layout.Entries.Count);
        var tooSmall = Assert.Throws<FitLMException>(() => StackPlanner.Plan(src, layout, baseOptions with { MemoryBudget = runtime }, 32));
        long smallest = long.Parse(System.Text.RegularExpressions.Regex.Match(tooSmall.Message, @"--memory (\d+)MiB").Groups[1].Value) << 20;
        foreach (long budget in new[] { smallest, midBudget, midBudget + layout.Entries[mid].Bytes - 1, 1L << 40 })
        {
            var options = baseOptions with { MemoryBudget = budget };
            var plan = StackPlanner.Plan(src, layout, options, 32);
            Assert.True(plan.TotalBytes <= budget, $"plan {plan.TotalBytes} > budget {budget}");
            using var lm = LanguageModel.Load(F.Stacked, options);
            var w = (StackedWeights)lm.Weights;
            Assert.Equal(plan.Stack!.Entries, w.LoadedEntries);
            Assert.Equal(plan.Stack.CacheType, w.CacheType);
            Assert.Equal(plan.Stack, lm.Plan.Stack);
        }
        Assert.Equal(mid, StackPlanner.Plan(src, layout, baseOptions with { MemoryBudget = midBudget }, 32).Stack!.Entries);
        Assert.Equal(mid, StackPlanner.Plan(src, layout, baseOptions with { MemoryBudget = midBudget + layout.Entries[mid].Bytes - 1 }, 32).Stack!.Entries);
    }

    [Fact]
    public void ParametersAndBytesPerTokenAreTheModels()
    {
        using var original = StackFixture.Open(F.Original);
        using var src = StackFixture.Open(F.Stacked);
        var layout = StackLayout.Read(src);
        // The stacked matrices count by their logical shapes, as in the model they came from.
        Assert.Equal(original.Tensors.Sum(t => t.Elements), layout.Parameters);
        Assert.NotEqual(src.Tensors.Sum(t => t.Elements), layout.Parameters);

        int k = layout.BaseEntries + 3;
        var blockNames = new HashSet<string>(layout.Entries.SelectMany(e => new[] { e.Sign.Name, e.U.Name, e.V.Name }));
        var embedding = src.Get("token_embd.weight");
        Assert.NotNull(src.Find("output.weight")); // the fixture has a separate head: the embedding is looked up, one row per token
        long conventional = src.Tensors.Where(t => !blockNames.Contains(t.Name)).Sum(t => t.ByteSize) - embedding.ByteSize + embedding.ByteSize / embedding.Rows;
        long q8 = layout.Matrices.Sum(m => GgmlTypes.RowBytes(GgmlType.Q8_0, m.Cols) * m.Rows);
        foreach (var (cache, expected) in new[] { ((GgmlType?)GgmlType.Q8_0, conventional + q8), (null, conventional + layout.BlockBytesBetween(0, k)) })
        {
            using var lm = LanguageModel.Load(F.Stacked, new LoadOptions
            {
                ContextLength = 16,
                Stack = new StackLoadOptions { WeightBytes = layout.BytesAt(k), CacheType = cache, CacheChosen = true },
            });
            Assert.Equal(layout.Parameters, Benchmark.Parameters(lm));
            Assert.Equal(expected, Benchmark.WeightBytesPerToken(lm));
            // The direct kernel multiplies the blocks, so its bytes per token follow the size; a cache's do not.
            lm.Resize(layout.BytesAt(k + 2));
            Assert.Equal(cache == null ? expected + layout.BlockBytesBetween(k, k + 2) : expected, Benchmark.WeightBytesPerToken(lm));
        }
    }
}
