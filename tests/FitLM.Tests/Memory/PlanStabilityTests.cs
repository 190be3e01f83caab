using FitLM.Memory;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Storage;
using FitLM.Tensors;
using Xunit;

namespace FitLM.Tests.Memory;

/// <summary>The same inputs give the same plan and the same prediction, whatever ran before in the process.</summary>
public sealed class PlanStabilityTests
{
    [Fact]
    public unsafe void PlanDoesNotDependOnWhatTheProcessHolds()
    {
        using var src = ModelSource.Open(TestPaths.DemoModel);
        var options = new LoadOptions { MemoryBudget = 100L << 20 };
        var before = LanguageModel.PlanLoad(TestPaths.DemoModel, src, options, 2048).Plan;
        // What `plan`'s storage probe did before it planned: hold and touch 64 MiB of buffers (RSS grows by that much).
        using (var held = new NativeBuffer(64L << 20))
        {
            held.Span.Fill(1);
            var during = LanguageModel.PlanLoad(TestPaths.DemoModel, src, options, 2048).Plan;
            Assert.Equal((before.Context, before.ResidentWeightBytes, before.RuntimeBytes, before.TotalBytes),
                (during.Context, during.ResidentWeightBytes, during.RuntimeBytes, during.TotalBytes));
        }
        Assert.Equal(RuntimeFootprint.Bytes(src), before.RuntimeBytes);
    }

    [Fact]
    public void FixedMachinePricesEveryPlanAlike_AndMeasuredSpeedsAreProbedOncePerProcess()
    {
        using var src = ModelSource.Open(TestPaths.DemoModel);
        var storage = new StorageProfile("x", true, [new(4 << 20, 1, 1e9, 0, Sequential: true), new(4 << 20, 4, 2e9, 0, Sequential: true), new(4 << 10, 1, 20e6, 0)]);
        var machine = MachineProfile.Fixed(4e9, 10e-6);
        var options = new LoadOptions { ContextLength = 256, MemoryBudget = 80L << 20, RuntimeBytes = 54L << 20, Machine = machine };
        var a = LanguageModel.PlanLoad(TestPaths.DemoModel, src, options, 256, storage).Plan;
        var b = LanguageModel.PlanLoad(TestPaths.DemoModel, src, options, 256, storage).Plan;
        Assert.Equal(a.PredictedTokensPerSecond, b.PredictedTokensPerSecond);
        // Nothing streamed at this budget or not, compute is the weights at 4 GB/s plus 57 matrix calls at 10 µs.
        double compute = Footprint.WeightBytesPerToken(src) / 4e9 + CostModel.MatrixCallsPerToken(src) * 10e-6;
        Assert.True(a.PredictedTokensPerSecond <= 1 / compute * (1 + 1e-9));
        Assert.Equal(57, CostModel.MatrixCallsPerToken(src));

        // The measured profile probes a type once: a second ask returns the very same number, however busy the machine.
        double first = MachineProfile.Measured.ComputeBytesPerSecond(GgmlType.Q8_0, CostModel.MinComputeProbeBytes);
        double second = MachineProfile.Measured.ComputeBytesPerSecond(GgmlType.Q8_0, CostModel.MinComputeProbeBytes);
        Assert.Equal(first, second);
        Assert.Equal(MachineProfile.Measured.DispatchSeconds, MachineProfile.Measured.DispatchSeconds);
    }
}

/// <summary>Probed speeds kept between processes: the best ever probed on this machine and build, never a worse one.</summary>
public sealed class MachineCacheTests
{
    [Fact]
    public void KeepsTheBestRateAndSurvivesACorruptFile()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"fitlm-machine-{Guid.NewGuid():N}");
        string path = Path.Combine(dir, "machine.json");
        try
        {
            Assert.Equal(5.0, MachineCache.Best(path, "compute q8_0", 5.0));
            Assert.Equal(8.0, MachineCache.Best(path, "compute q8_0", 8.0));
            Assert.Equal(8.0, MachineCache.Best(path, "compute q8_0", 3.0)); // a probe under load reads low: the best stands
            Assert.Equal(1.0, MachineCache.Best(path, "compute q4_K", 1.0)); // another entry, its own number
            File.WriteAllText(path, "{not json");
            Assert.Equal(2.0, MachineCache.Best(path, "compute q8_0", 2.0)); // a corrupt cache is ignored and rewritten
            Assert.Equal(2.0, MachineCache.Best(path, "compute q8_0", 1.0));
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }
}
