using System.Diagnostics;
using FitLM.Model;
using FitLM.Weights;

namespace FitLM.Evaluation;

/// <summary>One llama-bench style test: pp (prompt processing) or tg (text generation), tokens per second per repetition.</summary>
public sealed record BenchResult(string Test, int Tokens, double[] TokensPerSecond)
{
    public double Mean => TokensPerSecond.Average();
    public double StdDev
    {
        get
        {
            if (TokensPerSecond.Length < 2) return 0;
            double m = Mean;
            return Math.Sqrt(TokensPerSecond.Sum(x => (x - m) * (x - m)) / (TokensPerSecond.Length - 1));
        }
    }
}

/// <summary>
/// llama-bench's two tests: ppN evaluates N random tokens as one batch from an empty cache; tgN generates N
/// tokens one at a time (each a forward pass of one token) from an empty cache. One warm-up run first.
/// </summary>
public static class Benchmark
{
    public static BenchResult Prompt(LanguageModel lm, int n, int repetitions, CancellationToken ct = default)
    {
        var tokens = RandomTokens(lm, n, 1);
        var logits = new float[lm.Config.Vocab];
        return Measure($"pp{n}", n, repetitions, () => lm.Transformer.Forward(tokens, 0, logits, n - 1, ct));
    }

    public static BenchResult Generate(LanguageModel lm, int n, int repetitions, CancellationToken ct = default)
    {
        var tokens = RandomTokens(lm, n, 2);
        var logits = new float[lm.Config.Vocab];
        var one = new int[1];
        void Run()
        {
            for (int i = 0; i < n; i++)
            {
                one[0] = tokens[i];
                lm.Transformer.Forward(one, i, logits, 0, ct);
            }
        }
        return Measure($"tg{n}", n, repetitions, Run);
    }

    /// <summary>
    /// tgN×P: P sequences decoded together, one token each per forward pass (as the server's continuous batching
    /// runs them, batch-invariant (<see cref="Tensors.CpuOptions.BatchInvariant"/>) unless <paramref name="batchInvariant"/> is false), N passes
    /// from empty caches. The rate is all sequences' tokens per second (llama-batched-bench's S_TG).
    /// </summary>
    public static BenchResult GenerateParallel(LanguageModel lm, int n, int parallel, int repetitions, bool batchInvariant = true, CancellationToken ct = default)
    {
        if (parallel > lm.Transformer.MaxBatch) throw new FitLMException($"{parallel} sequences do not fit a batch of {lm.Transformer.MaxBatch}");
        var tf = lm.Transformer;
        var stores = Enumerable.Range(0, parallel).Select(_ => tf.CreateSequenceKv()).ToArray(); // on a GPU: its KV slots
        var tokens = Enumerable.Range(0, parallel).Select(p => RandomTokens(lm, n, 3 + p)).ToArray();
        var slices = new SequenceSlice[parallel];
        var logits = new float[(long)parallel * lm.Config.Vocab];
        void Run()
        {
            for (int i = 0; i < n; i++)
            {
                for (int p = 0; p < parallel; p++) slices[p] = new SequenceSlice(stores[p], tokens[p].AsMemory(i, 1), i, WantLogits: true);
                tf.Forward(slices, logits, batchInvariant, ct);
            }
        }
        try
        {
            return Measure($"tg{n}x{parallel}", n * parallel, repetitions, Run);
        }
        finally
        {
            foreach (var s in stores) s.Dispose();
        }
    }

    /// <summary>One warm-up run, then <paramref name="repetitions"/> timed runs of <paramref name="tokens"/> tokens each.</summary>
    private static BenchResult Measure(string test, int tokens, int repetitions, Action run)
    {
        run(); // warm-up
        var rates = new double[repetitions];
        for (int r = 0; r < repetitions; r++)
        {
            var sw = Stopwatch.StartNew();
            run();
            rates[r] = tokens / sw.Elapsed.TotalSeconds;
        }
        return new BenchResult(test, tokens, rates);
    }

    private static int[] RandomTokens(LanguageModel lm, int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => rng.Next(lm.Config.Vocab)).ToArray();
    }

    /// <summary>
    /// Bytes of weights one decode step of a loaded model reads: for a stacked (BitStack) model the bytes it
    /// multiplies at its size now (matrix caches, or blocks with the direct kernel), else <see cref="WeightBytesPerToken(IModelSource)"/>.
    /// </summary>
    public static long WeightBytesPerToken(LanguageModel lm) => lm.Plan.Stack?.BytesPerToken ?? Memory.Footprint.WeightBytesPerToken(lm.Source, lm.Plan.FlashNeuronFraction);

    /// <summary>Parameters of a loaded model: a stacked model's are its matrices' logical shapes, not its block tensors.</summary>
    public static long Parameters(LanguageModel lm) =>
        lm.Weights.Parameters ?? lm.Source.Tensors.Sum(t => t.Elements);

}
