using FitLM.Tensors;
using FitLM.Tensors.Jit;
using Xunit;

namespace FitLM.Tests.Kernels;

/// <summary>
/// The CPU's switches as one options record: the environment read in one place, the kernels' constants taken from
/// it, and batch invariance a scoped setting that a pass restores.
/// </summary>
public class CpuOptionsTests
{
    [Fact]
    public void WithoutVariables_TheDefaultsAreTheKernelsTunedValues()
    {
        var o = CpuOptions.FromEnvironment(_ => null);
        Assert.Equal(new CpuOptions(), o);
        Assert.True(o.Jit);
        Assert.False(o.BatchInvariant);
        Assert.Equal((4096, 2048, 0), (o.JitPrefetchBytes, o.PrefetchBytes, o.FloatPrefetchBytes));
        Assert.Equal(Math.Max(1, Environment.ProcessorCount), o.Threads);
    }

    [Fact]
    public void Variables_OverrideTheirOption_AndNonsenseKeepsTheDefault()
    {
        var vars = new Dictionary<string, string>
        {
            ["FITLM_JIT"] = "0", ["FITLM_JIT_PREFETCH"] = "1000", ["FITLM_PREFETCH_BYTES"] = "-5", ["FITLM_PREFETCH_BYTES_FLOAT"] = "4096",
        };
        var o = CpuOptions.FromEnvironment(vars.GetValueOrDefault);
        Assert.False(o.Jit);
        Assert.Equal(1000, o.JitPrefetchBytes);
        Assert.Equal(2048, o.PrefetchBytes); // negative: ignored
        Assert.Equal(4096, o.FloatPrefetchBytes);
        Assert.True(CpuOptions.FromEnvironment(_ => "1").Jit); // only 0 turns the generated kernels off
    }

    [Fact]
    public void TheKernels_TakeTheirConstantsFromTheProcessOptions()
    {
        var d = CpuOptions.Default;
        Assert.Equal(d.PrefetchBytes, IntDot.PrefetchBytes);
        Assert.Equal(d.FloatPrefetchBytes, FloatDot.PrefetchBytes);
        Assert.Equal(d.Jit, GeneratedKernels.Enabled);
        Assert.Equal(d.JitPrefetchBytes / 64 * 64, GeneratedKernels.PrefetchBytes);
    }

    [Fact]
    public void RowWiseScope_SetsForItsDuration_AndRestoresWhatWasThere()
    {
        Assert.False(MatMul.RowWise);
        using (MatMul.RowWiseScope(true))
        {
            Assert.True(MatMul.RowWise);
            using (MatMul.RowWiseScope(false)) Assert.False(MatMul.RowWise);
            Assert.True(MatMul.RowWise);
        }
        Assert.False(MatMul.RowWise);
    }
}
