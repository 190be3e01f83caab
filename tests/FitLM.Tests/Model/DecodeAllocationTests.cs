using FitLM.Generation;
using FitLM.Model;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Model;

/// <summary>The decode loop (forward pass of one token + sampling) allocates nothing per token, so the GC never runs during generation.</summary>
[Collection(SequentialCollection.Name)]
public class DecodeAllocationTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(0f)]
    [InlineData(0.8f)]
    public void DecodingAllocatesNothingPerToken(float temperature)
    {
        using var lm = LanguageModel.Load(TestPaths.DemoModel, 512);
        var sampler = new Sampler(new SamplingOptions { Temperature = temperature, Seed = 1, RepeatPenalty = 1.1f }, lm.Config.Vocab);
        var logits = new float[lm.Config.Vocab];
        var history = new int[400];
        int[] one = [lm.Tokenizer.BosId];
        history[0] = one[0];
        int n = 1;
        void Step()
        {
            lm.Transformer.Forward(one, n - 1, logits, 0);
            one[0] = sampler.Sample(logits, history.AsSpan(0, n));
            history[n++] = one[0];
        }
        for (int i = 0; i < 40; i++) Step(); // warm-up: JIT, thread-static buffers, worker threads

        int gen0 = GC.CollectionCount(0), gen1 = GC.CollectionCount(1), gen2 = GC.CollectionCount(2);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 256; i++) Step();
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        output.WriteLine($"256 tokens: {allocated} bytes allocated; GC collections gen0 {GC.CollectionCount(0) - gen0}, gen1 {GC.CollectionCount(1) - gen1}, gen2 {GC.CollectionCount(2) - gen2}");
        Assert.Equal(gen0, GC.CollectionCount(0));
        Assert.Equal(gen1, GC.CollectionCount(1));
        Assert.Equal(gen2, GC.CollectionCount(2));
        // Counted on the decoding thread: the test runner's own threads allocate as they please meanwhile.
        Assert.Equal(0, allocated);
    }
}
