using FitLM.Generation;
using FitLM.Memory;
using FitLM.Runtime;
using FitLM.Tests.BitStack;
using FitLM.Weights;
using Xunit;

namespace FitLM.Tests.Adaptation;

/// <summary>
/// Nothing is lost (issue 17, acceptance 2): a model whose budget drops and comes back computes, once it is back, the
/// same logits as a model loaded at that size — for a BitStack model (blocks dropped and re-read) and for a model whose
/// layers moved to streamed and back. The generation runs on through both changes.
/// </summary>
public class BudgetRoundTripTests
{
    private static readonly StackFixture F = StackFixture.Shared;
    private const long Generous = 1L << 40;

    [Fact]
    public void AStackedModelBackAtItsSizeComputesWhatAFreshLoadComputes()
    {
        var options = new LoadOptions { ContextLength = 64, MemoryBudget = Generous, Kv = new() { Type = FitLM.KvCache.KvType.F16 } };
        using var lm = LanguageModel.Load(F.Stacked, options);
        var stacked = lm.Stacked!;
        var layout = stacked.Layout!;
        int full = stacked.LoadedEntries;
        int[] prompt = [1, 400, 1234, 77];
        var gen = new Generator(lm);
        var before = gen.Generate(prompt, 6, SamplingOptions.Greedy).Where(t => t.Id >= 0).Select(t => t.Id).ToList();

        // A budget that holds the smallest whole model beside what the process holds now, but not the full stack
        // (the test host's heaps trimmed first, as the governor trims them, so "now" is what it holds for good).
        HeapTrim.All();
        long others = Math.Max(0, ProcessMemory.RssBytes() - stacked.ResidentBytes) + (24L << 20);
        long small = others + stacked.CacheBytes + layout.BytesAt(layout.BaseEntries);
        long gcLimit = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        var down = lm.SetBudget(small)!;
        Assert.True(stacked.LoadedEntries < full, $"entries {stacked.LoadedEntries} of {full} after {down}");
        // A library caller's budget leaves the process's GC alone (the limit is process-wide; the governor collected since).
        Assert.False(lm.Governor.LimitsGcHeap);
        Assert.Equal(gcLimit, GC.GetGCMemoryInfo().TotalAvailableMemoryBytes);
        Assert.Contains("stack", down.ToString());
        Assert.Equal(small, lm.Plan.BudgetBytes);
        // The sequence goes on at the smaller size.
        var during = gen.Generate([.. prompt, .. before], 4, SamplingOptions.Greedy, cachedPrefix: prompt.Length + before.Count).Count(t => t.Id >= 0);
        Assert.Equal(4, during);

        var up = lm.SetBudget(Generous)!;
        Assert.Equal(full, stacked.LoadedEntries);
        Assert.Equal(2, lm.Governor.Count);
        Assert.Contains($"-> {full} blocks", up.ToString());

        using var fresh = LanguageModel.Load(F.Stacked, options);
        lm.Transformer.Kv.Truncate(0);
        Assert.Equal(StackFixture.Logits(fresh.Transformer, fresh.Config.Vocab), StackFixture.Logits(lm.Transformer, lm.Config.Vocab));
    }

    [Fact]
    public void LayersStreamedAndRestoredComputeWhatAResidentLoadComputes()
    {
        // Movable weights: every layer resident now, each able to move (what --memory auto and cgroup load).
        var options = new LoadOptions { ContextLength = 256, MemoryBudget = Generous, MovableWeights = true, Kv = new() { Type = FitLM.KvCache.KvType.F16 } };
        using var lm = LanguageModel.Load(TestPaths.DemoModel, options);
        var weights = Assert.IsType<StreamingWeights>(lm.Weights);
        int layers = lm.Config.Layers;
        Assert.Equal(layers, Enumerable.Range(0, layers).Count(weights.IsLayerResident));
        int[] prompt = lm.Tokenizer.Encode("def fibonacci(n):", addSpecial: true, parseSpecial: false);
        var gen = new Generator(lm);
        var first = gen.Generate(prompt, 5, SamplingOptions.Greedy).Where(t => t.Id >= 0).Select(t => t.Id).ToArray();

        // A budget between the smallest plan and the whole model: the KV type steps down, then layers go to streamed.
        var plan = lm.Plan;
        long small = plan.TotalBytes - plan.ResidentWeightBytes / 2;
        var down = lm.SetBudget(small)!;
        Assert.True(Enumerable.Range(0, layers).Count(weights.IsLayerResident) < layers, down.ToString());
        Assert.Contains(" layers", down.ToString());
        Assert.True(lm.Plan.TotalBytes <= small, $"plan {lm.Plan.TotalBytes} over {small}");

        var up = lm.SetBudget(Generous)!;
        Assert.Equal(layers, Enumerable.Range(0, layers).Count(weights.IsLayerResident));
        Assert.Equal(FitLM.KvCache.KvType.F16, lm.Transformer.KvStores.Options.Type); // back to the type it was loaded with
        Assert.Contains($"-> {layers} of {layers} layers", up.ToString());

        // From the start again: the same tokens as before the drop, and as a model loaded resident.
        var again = gen.Generate(prompt, 5, SamplingOptions.Greedy).Where(t => t.Id >= 0).Select(t => t.Id).ToArray();
        Assert.Equal(first, again);
        using var resident = LanguageModel.Load(TestPaths.DemoModel, options with { MovableWeights = false });
        Assert.IsType<ResidentWeights>(resident.Weights);
        lm.Transformer.Kv.Truncate(0);
        Assert.Equal(StackFixture.Logits(resident.Transformer, resident.Config.Vocab), StackFixture.Logits(lm.Transformer, lm.Config.Vocab));
    }

    [Fact]
    public void LayersUnderALoraAdapterMoveToo()
    {
        if (TestPaths.Shared is not { } shared) { Console.WriteLine("skipped: ../shared is absent"); return; }
        var options = new LoadOptions
        {
            ContextLength = 256, MemoryBudget = Generous, MovableWeights = true, Kv = new() { Type = FitLM.KvCache.KvType.F16 },
            Adapters = [new FitLM.Adapters.LoraRequest(Path.Combine(shared, "finetune"))],
        };
        using var lm = LanguageModel.Load(TestPaths.DemoModel, options);
        var weights = Assert.IsType<StreamingWeights>(Assert.IsType<FitLM.Adapters.LoraWeights>(lm.Weights).Inner);
        var down = lm.SetBudget(lm.Plan.TotalBytes - lm.Plan.ResidentWeightBytes / 2)!;
        Assert.Contains(" layers", down.ToString());
        Assert.True(Enumerable.Range(0, lm.Config.Layers).Count(weights.IsLayerResident) < lm.Config.Layers);
        lm.SetBudget(Generous);
        lm.Transformer.Kv.Truncate(0);
        using var fresh = LanguageModel.Load(TestPaths.DemoModel, options with { MovableWeights = false });
        Assert.Equal(StackFixture.Logits(fresh.Transformer, fresh.Config.Vocab), StackFixture.Logits(lm.Transformer, lm.Config.Vocab));
    }
}
