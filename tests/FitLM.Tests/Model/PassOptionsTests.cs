using FitLM.Memory;
using FitLM.Model;
using FitLM.Tensors;
using Xunit;

namespace FitLM.Tests.Model;

/// <summary>
/// Batch invariance is a pass's option: asked for by the call, or the transformer's <see cref="CpuOptions"/> by
/// default; the pass applies it and leaves the thread as it found it.
/// </summary>
public class PassOptionsTests
{
    [Fact]
    public void ABatchInvariantPass_EqualsOneRowPasses_WhetherTheCallOrTheOptionsAskForIt()
    {
        using var lm = LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = 64 });
        var tokens = lm.Tokenizer.Encode("def fibonacci(n):\n    if n < 2:\n        return n");
        int vocab = lm.Config.Vocab, n = tokens.Length;
        var asked = new float[n * vocab];
        lm.Transformer.Forward(tokens, 0, asked, 0, batchInvariant: true);
        Assert.False(MatMul.RowWise);
        Assert.Equal(MatMul.Threads, lm.Transformer.Options.Threads); // the pool's size, which --threads sets

        var tf = new Transformer(lm.Config, lm.Weights, 64, options: new CpuOptions { BatchInvariant = true });
        Assert.True(tf.Options.BatchInvariant);
        var byOptions = new float[n * vocab];
        tf.Forward(tokens, 0, byOptions, 0);
        Assert.Equal(asked, byOptions);

        var one = new float[vocab];
        for (int t = 0; t < n; t++)
        {
            lm.Transformer.Forward(tokens.AsSpan(t, 1), t, one, 0);
            Assert.True(one.AsSpan().SequenceEqual(asked.AsSpan(t * vocab, vocab)), $"row {t} differs from its one-row pass");
        }
    }
}
