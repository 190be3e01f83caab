using FitLM.Memory;
using FitLM.Model;
using Xunit;
using FitLM.Weights;

namespace FitLM.Tests.Memory;

/// <summary>Streaming changes where weights come from, never what the model computes.</summary>
public class StreamingTests
{
    /// <summary>A fixed figure for the rest of the process, so the plan does not depend on the test host's RSS.</summary>
    private const long Runtime = 64L << 20;

    private static float[] Run(LanguageModel lm, int[] prompt, int steps)
    {
        int v = lm.Config.Vocab;
        var all = new List<float>();
        var logits = new float[prompt.Length * v];
        lm.Transformer.Forward(prompt, 0, logits, 0);
        all.AddRange(logits);
        var last = logits.AsSpan((prompt.Length - 1) * v, v).ToArray();
        for (int i = 0; i < steps; i++)
        {
            int next = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(last);
            lm.Transformer.Forward([next], prompt.Length + i, last, 0);
            all.AddRange(last);
        }
        return all.ToArray();
    }

    [Fact]
    public void StreamedAndResidentGiveBitIdenticalLogits()
    {
        string model = TestPaths.DemoModel;
        int[] prompt;
        float[] resident;
        using (var lm = LanguageModel.Load(model, new LoadOptions { ContextLength = 64 }))
        {
            Assert.False(lm.Plan.Streams);
            prompt = lm.Tokenizer.Encode("def add(a, b):\n    return");
            resident = Run(lm, prompt, 6);
        }
        using (var naive = LanguageModel.Load(model, new LoadOptions { ContextLength = 64, Stream = StreamMode.Naive }))
        {
            Assert.IsType<StreamingWeights>(naive.Weights);
            Assert.Equal(resident, Run(naive, prompt, 6));
        }
        // A budget that holds some layers but not all: prefetching streamer with resident and streamed units.
        long budget;
        using (var src = ModelSource.Open(model))
        {
            var all = Planner.Plan(src, new Planner.Options { BudgetBytes = 1L << 40, Context = 64, RuntimeBytes = Runtime });
            budget = all.TotalBytes - all.ResidentWeightBytes / 2;
        }
        using (var partial = LanguageModel.Load(model, new LoadOptions { ContextLength = 64, MemoryBudget = budget, RuntimeBytes = Runtime }))
        {
            Assert.True(partial.Plan.Streams);
            Assert.Contains(partial.Plan.Tensors, t => t.Placement == Placement.Resident && t.Tensor.Shape.Length == 2);
            Assert.Equal(resident, Run(partial, prompt, 6));
            var sw = (StreamingWeights)partial.Weights;
            Assert.True(sw.BytesRead >= partial.Plan.StreamedBytesPerToken * 6, "streamed units must be re-read every token");
        }
    }
}
