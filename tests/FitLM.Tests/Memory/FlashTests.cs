using FitLM.Memory;
using FitLM.Model;
using FitLM.Storage;
using Xunit;
using FitLM.Conversion;
using FitLM.Weights;

namespace FitLM.Tests.Memory;

/// <summary>LLM-in-a-flash pieces: bundled FFN layout, neuron windows, and their errors.</summary>
public sealed class FlashTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-flash-").FullName;
    public void Dispose() => Directory.Delete(_dir, true);

    /// <summary>A small random f16 model (f16 keeps the down column exact when bundled) and its prepared form.</summary>
    private (string original, string prepared) Models()
    {
        string original = Path.Combine(_dir, "tiny-f16.gguf"), prepared = Path.Combine(_dir, "tiny-f16.flash.gguf");
        SyntheticModel.Write(original, SyntheticShape.Parse("tiny"), "f16", TestPaths.DemoModel, seed: 7);
        FlashPrepare.Write(original, prepared);
        return (original, prepared);
    }

    private static float[] Logits(LanguageModel lm, int[] tokens)
    {
        var logits = new float[tokens.Length * lm.Config.Vocab];
        lm.Transformer.Forward(tokens, 0, logits, 0);
        return logits;
    }

    [Fact]
    public void PreparedModelComputesTheSameFunction()
    {
        var (original, prepared) = Models();
        int[] tokens = [0, 17, 300, 4000, 25, 8000, 3];
        using var a = LanguageModel.Load(original, 32);
        using var b = LanguageModel.Load(prepared, 32);
        Assert.IsType<FlashWeights>(b.Weights);
        var x = Logits(a, tokens);
        var y = Logits(b, tokens);
        double max = x.Zip(y).Max(p => Math.Abs(p.First - p.Second)), scale = x.Max(Math.Abs);
        Assert.True(max <= 1e-4 * scale, $"bundled FFN differs by {max} (logit scale {scale})");
    }

    /// <summary>Records what a selector chose, and the FFN input it chose for, per layer.</summary>
    private sealed class Recording(INeuronSelector inner) : INeuronSelector
    {
        public readonly Dictionary<int, List<int[]>> Chosen = new();
        public readonly Dictionary<int, List<float[]>> Inputs = new();
        public int MaxPerToken(int ffn) => inner.MaxPerToken(ffn);
        public int Select(int layer, ReadOnlySpan<float> x, Span<int> selected)
        {
            int k = inner.Select(layer, x, selected);
            (Chosen.TryGetValue(layer, out var l) ? l : Chosen[layer] = new()).Add(selected[..k].ToArray());
            (Inputs.TryGetValue(layer, out var xs) ? xs : Inputs[layer] = new()).Add(x.ToArray());
            return k;
        }
    }

    [Fact]
    public void WindowReadsOnlyNeuronsNewToTheLastKTokens()
    {
        var (_, prepared) = Models();
        const int window = 3;
        using var src = ModelSource.Open(prepared);
        var selector = new Recording(new RandomFraction(0.2, seed: 5));
        using var weights = new FlashWeights(new ResidentWeights(src), src, selector, window);
        var tf = new Transformer(src.Config, weights, 64, 8);
        var logits = new float[src.Config.Vocab];
        int[] prompt = [0, 5, 6, 7];
        tf.Forward(prompt, 0, logits, prompt.Length - 1);
        for (int i = 0; i < 12; i++) tf.Forward([i * 31 % 1000], prompt.Length + i, logits, 0);
        Assert.All(logits, v => Assert.True(float.IsFinite(v)));

        for (int layer = 0; layer < src.Config.Layers; layer++)
        {
            var steps = selector.Chosen[layer];
            long expected = 0;
            for (int t = 0; t < steps.Count; t++)
            {
                var recent = steps.Skip(Math.Max(0, t - window)).Take(t - Math.Max(0, t - window)).SelectMany(s => s).ToHashSet();
                expected += steps[t].Count(n => !recent.Contains(n));
            }
            var ffn = weights.Layers[layer];
            Assert.Equal(steps.Count, ffn.Steps);
            Assert.Equal(expected, ffn.NeuronsRead);
            Assert.Equal(steps.Sum(s => s.Length), ffn.NeuronsUsed);
        }
    }

    /// <summary>Runs a prompt and a few decode steps through a prepared model's flash FFN.</summary>
    private static FlashWeights Run(IModelSource src, INeuronSelector selector, int window, bool audit = false)
    {
        var weights = new FlashWeights(new ResidentWeights(src), src, selector, window, audit);
        var tf = new Transformer(src.Config, weights, 64, 8);
        var logits = new float[src.Config.Vocab];
        int[] prompt = [0, 5, 6, 7, 300, 4000];
        tf.Forward(prompt, 0, logits, prompt.Length - 1);
        for (int i = 0; i < 6; i++) tf.Forward([i * 31 % 1000], prompt.Length + i, logits, 0);
        return weights;
    }

    [Fact]
    public void CountersOfAllNeuronsWithAndWithoutAWindow()
    {
        var (_, prepared) = Models();
        using var src = ModelSource.Open(prepared);
        int ffn = src.Config.FfnDim;
        // Window 0: nothing is kept between tokens, so every neuron is read fresh for every token.
        using (var none = Run(src, new AllNeurons(), 0))
            foreach (var l in none.Layers)
            {
                Assert.Equal(12, l.Steps);
                Assert.Equal(l.Steps * ffn, l.NeuronsUsed);
                Assert.Equal(l.Steps * ffn, l.NeuronsRead);
                Assert.Equal(l.Steps * ffn, l.NeuronsHeld);
            }
        // Window 4: the first token reads every neuron, and the window then holds them all.
        using (var kept = Run(src, new AllNeurons(), 4))
            foreach (var l in kept.Layers)
            {
                Assert.Equal(ffn, l.NeuronsRead);
                Assert.Equal(l.Steps * ffn, l.NeuronsHeld);
            }
    }

    [Fact]
    public void RecallAuditCountsTheTrueTopNeuronsThatWereChosen()
    {
        var (original, prepared) = Models();
        using var src = ModelSource.Open(prepared);
        using var plain = ModelSource.Open(original);
        var c = src.Config;
        var selector = new Recording(new RandomFraction(0.25, seed: 9));
        using var weights = Run(src, selector, 2, audit: true);
        Assert.True(weights.Audited);
        for (int layer = 0; layer < c.Layers; layer++)
        {
            // The true top-k by |silu(gate·x)·(up·x)|, from the unprepared file's gate and up matrices.
            float[] Rows(string name)
            {
                var t = plain.Get(name);
                var raw = new byte[t.ByteSize];
                plain.Read(t, 0, raw);
                var w = new float[(long)c.FfnDim * c.Dim];
                for (int i = 0; i < c.FfnDim; i++)
                    FitLM.Tensors.Dequantize.Row(t.Type, raw.AsSpan(i * raw.Length / c.FfnDim, raw.Length / c.FfnDim), w.AsSpan(i * c.Dim, c.Dim));
                return w;
            }
            var gate = Rows($"blk.{layer}.ffn_gate.weight");
            var up = Rows($"blk.{layer}.ffn_up.weight");
            long important = 0, caught = 0;
            for (int t = 0; t < selector.Chosen[layer].Count; t++)
            {
                var x = selector.Inputs[layer][t];
                var chosen = selector.Chosen[layer][t];
                double Importance(int i)
                {
                    double g = 0, u = 0;
                    for (int j = 0; j < c.Dim; j++) { g += gate[i * c.Dim + j] * x[j]; u += up[i * c.Dim + j] * x[j]; }
                    return Math.Abs(g / (1 + Math.Exp(-g)) * u);
                }
                var top = Enumerable.Range(0, c.FfnDim).OrderByDescending(Importance).Take(chosen.Length).ToHashSet();
                important += chosen.Length;
                caught += chosen.Count(top.Contains);
            }
            var ffn = weights.Layers[layer];
            Assert.Equal(important, ffn.AuditImportant);
            // float against double sums may swap a neuron at the edge of the top k now and then.
            Assert.InRange(ffn.AuditCaught, caught - important / 100 - 1, caught + important / 100 + 1);
            Assert.InRange(caught / (double)important, 0.1, 0.4); // a random quarter catches about a quarter
        }
    }

    [Fact]
    public void FractionOnAnUnpreparedModelAndTruncatedPreparedFilesGiveClearErrors()
    {
        var (original, prepared) = Models();
        var e = Assert.Throws<FitLMException>(() => LanguageModel.Load(original, new LoadOptions { ContextLength = 16, FfnFraction = 0.1 }));
        Assert.Contains("prepare", e.Message);
        string cut = Path.Combine(_dir, "cut.flash.gguf");
        var bytes = File.ReadAllBytes(prepared);
        File.WriteAllBytes(cut, bytes[..(bytes.Length - 5000)]);
        var t = Assert.Throws<FitLMException>(() => LanguageModel.Load(cut, 16));
        Assert.Contains("past the end", t.Message);
        Assert.Throws<FitLMException>(() => FlashPrepare.Write(prepared, Path.Combine(_dir, "twice.gguf")));
    }
}
