using FitLM.Storage;
using Xunit;
using FitLM.Memory;
using FitLM.Weights;

namespace FitLM.Tests.Memory;

public sealed class StorageProfileTests
{
    private static StorageProfile Profile(bool withSequential)
    {
        var points = new List<StorageProfile.Point>
        {
            new(4 << 10, 1, 20e6, 0), new(4 << 20, 1, 1e9, 0),
            new(4 << 10, 4, 60e6, 0), new(4 << 20, 4, 1.2e9, 0),
        };
        if (withSequential) points.Add(new(4 << 20, 4, 2e9, 0, Sequential: true));
        return new StorageProfile("x", true, points);
    }

    [Fact]
    public void SequentialReadsUseTheSequentialCurveAndFallBackToRandom()
    {
        Assert.Equal(2e9, Profile(true).BytesPerSecond(4 << 20, 4, sequential: true));
        Assert.Equal(1.2e9, Profile(true).BytesPerSecond(4 << 20, 4));             // random unchanged
        Assert.Equal(1.2e9, Profile(false).BytesPerSecond(4 << 20, 4, sequential: true)); // no sequential points
        Assert.Equal(2e9, Profile(true).BytesPerSecond(4 << 20, 32, sequential: true));   // nearest depth below
    }

    [Fact]
    public void RandomReadsInterpolateInLogSizeAtTheDepthBelow()
    {
        var p = Profile(false);
        double mid = p.BytesPerSecond(128 << 10, 16); // halfway in log2 between 4 KiB and 4 MiB, depth 4
        Assert.Equal(60e6 + (1.2e9 - 60e6) * 0.5, mid, 1);
        Assert.Equal(20e6 * 0.5, p.BytesPerSecond(2 << 10, 1), 1); // below the smallest size: proportional
    }
}

/// <summary>
/// A storage probe prices a plan and never changes it: `run` does not probe, so `plan` (which does) must print the plan
/// run makes. It once took the mode predicted faster, and under a slow probe showed naive streaming where run streamed
/// with prefetch (BudgetTests.PlanAndRunChooseTheSamePlan failed in CI).
/// </summary>
public sealed class StreamModeChoiceTests
{
    [Theory]
    [InlineData(20e6)]   // slow storage
    [InlineData(20e9)]   // fast storage
    public void ProbeDoesNotChangeThePlan(double sequentialBytesPerSecond)
    {
        using var src = FitLM.Model.ModelSource.Open(TestPaths.DemoModel);
        var storage = new StorageProfile("x", true, new List<StorageProfile.Point>
        {
            new(4 << 10, 1, 20e6, 0), new(4 << 20, 1, 1e9, 0), new(4 << 10, 4, 60e6, 0), new(4 << 20, 4, 1.2e9, 0),
            new(4 << 20, 1, sequentialBytesPerSecond / 2, 0, Sequential: true), new(4 << 20, 4, sequentialBytesPerSecond, 0, Sequential: true),
        });
        // A budget that holds the runtime, KV and buffers but not all weights: something is streamed.
        var basis = new LoadOptions { ContextLength = 256, MemoryBudget = 76L << 20, RuntimeBytes = 54L << 20, Machine = MachineProfile.Fixed(4e9, 10e-6) };
        foreach (var mode in new[] { StreamMode.Naive, StreamMode.Prefetch })
        {
            var unpriced = LanguageModel.PlanLoad(TestPaths.DemoModel, src, basis with { Stream = mode }, 256).Plan;
            var priced = LanguageModel.PlanLoad(TestPaths.DemoModel, src, basis with { Stream = mode }, 256, storage).Plan;
            Assert.True(priced.Streams, "the budget should make the plan stream");
            Assert.Equal(mode, priced.Mode);
            Assert.Equal(unpriced.ResidentWeightBytes, priced.ResidentWeightBytes);
            Assert.Equal(unpriced.StreamBufferBytes, priced.StreamBufferBytes);
            Assert.True(priced.PredictedTokensPerSecond > 0);
        }
    }
}
