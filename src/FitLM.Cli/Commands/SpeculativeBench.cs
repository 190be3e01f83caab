using System.Diagnostics;
using FitLM.Evaluation;
using FitLM.Generation;

namespace FitLM.Cli.Commands;

/// <summary>
/// `fitlm bench --lookup N | --draft MODEL`: greedy generation of -n tokens from a prompt (--spec-prompt FILE, else
/// -p random tokens), plain and speculative, interleaved repetition by repetition so both see the same machine.
/// The rate is decode only: the tokens after the prompt's pass over the time after it. Random tokens make a poor
/// prompt for lookup (nothing to copy): give a real one.
/// </summary>
internal static class SpeculativeBench
{
    public sealed record Outcome(BenchResult Plain, BenchResult Speculative, SpeculativeStatistics Statistics, bool Identical)
    {
        /// <summary>Cost of a verification pass of Rows rows in one-token decode steps.</summary>
        public IReadOnlyList<(int Rows, double Ratio)> PassCost { get; init; } = [];
    }

    public static Outcome Run(LanguageModel lm, IDrafter drafter, int draftMax, string name, int[] prompt, int n, int repetitions, CancellationToken ct)
    {
        var greedy = new SamplingOptions { Temperature = 0, IgnoreEos = true };
        var plainGen = new Generator(lm);
        var specGen = new SpeculativeGenerator(lm, drafter, draftMax);
        int[]? plainIds = null, specIds = null;
        double Time(Func<IEnumerable<GeneratedToken>> generate, Func<TimeSpan> promptTime, ref int[]? ids)
        {
            var sw = Stopwatch.StartNew();
            var got = generate().Where(t => t.Id >= 0).Select(t => t.Id).ToArray();
            double seconds = (sw.Elapsed - promptTime()).TotalSeconds;
            ids ??= got;
            return seconds > 0 ? Math.Max(0, got.Length - 1) / seconds : 0;
        }
        // One untimed round of each compiles every path.
        Time(() => plainGen.Generate(prompt, n, greedy, ct: ct), () => plainGen.LastPromptEvalTime, ref plainIds);
        Time(() => specGen.Generate(prompt, n, greedy, ct: ct), () => specGen.LastPromptEvalTime, ref specIds);
        var plain = new double[repetitions];
        var spec = new double[repetitions];
        for (int r = 0; r < repetitions; r++)
        {
            plain[r] = Time(() => plainGen.Generate(prompt, n, greedy, ct: ct), () => plainGen.LastPromptEvalTime, ref plainIds);
            spec[r] = Time(() => specGen.Generate(prompt, n, greedy, ct: ct), () => specGen.LastPromptEvalTime, ref specIds);
        }
        return new Outcome(new BenchResult($"tg{n} greedy", n, plain), new BenchResult($"tg{n} {name}", n, spec),
            specGen.Statistics, plainIds!.AsSpan().SequenceEqual(specIds));
    }

    /// <summary>
    /// What a verification pass of r rows costs against a one-token decode step, at the prompt's end: the median of
    /// <paramref name="repetitions"/> + 2 passes for each r in 1, 2, 4, … up to draft-max + 1 (the ratio for r = 1 is 1).
    /// Where this grows like r the model is compute-bound and only accepted rows pay for themselves.
    /// </summary>
    public static IReadOnlyList<(int Rows, double Ratio)> PassCost(LanguageModel lm, int[] prompt, int draftMax, int repetitions, CancellationToken ct)
    {
        var tf = lm.Transformer;
        int vocab = lm.Config.Vocab, p = prompt.Length;
        var logits = new float[(draftMax + 1) * vocab];
        tf.Forward(prompt, 0, logits.AsSpan(0, vocab), p - 1, ct);
        var rowsList = new List<int>();
        for (int r = 1; r <= draftMax + 1; r *= 2) rowsList.Add(r);
        if (rowsList[^1] != draftMax + 1) rowsList.Add(draftMax + 1);
        var batch = Enumerable.Repeat(prompt[^1], draftMax + 1).ToArray();
        // Round-robin over the sizes, so every size sees the same moments of a busy machine.
        var times = new double[rowsList.Count][];
        for (int k = 0; k < times.Length; k++) times[k] = new double[repetitions + 2];
        try
        {
            for (int i = -1; i < repetitions + 2; i++)
                for (int k = 0; k < rowsList.Count; k++)
                {
                    long t0 = Stopwatch.GetTimestamp();
                    tf.Forward(batch.AsSpan(0, rowsList[k]), p, logits.AsSpan(0, rowsList[k] * vocab), 0, batchInvariant: true, ct);
                    if (i >= 0) times[k][i] = Stopwatch.GetElapsedTime(t0).TotalSeconds; // i = -1: compiles
                }
        }
        finally { tf.Kv.Truncate(0); }
        double Median(double[] t) { Array.Sort(t); return t[t.Length / 2]; }
        double one = Median(times[0]);
        return rowsList.Select((r, k) => (r, Median(times[k]) / one)).ToList();
    }

    /// <summary>The prompt of the speculative tests: the file's tokens (at most <paramref name="max"/>), else <paramref name="random"/> random ones.</summary>
    public static int[] Prompt(LanguageModel lm, string? file, int random, int max)
    {
        if (file != null)
        {
            var tokens = lm.Tokenizer.Encode(TextInput.Read(file, "prompt file"), addSpecial: true, parseSpecial: true);
            if (tokens.Length == 0) throw new FitLMException($"{file}: the prompt is empty");
            return tokens.Length > max ? tokens[..max] : tokens;
        }
        var rng = new Random(4);
        return Enumerable.Range(0, Math.Clamp(random, 1, max)).Select(_ => rng.Next(lm.Config.Vocab)).ToArray();
    }

    /// <summary>Lines under the table: tokens per target pass, acceptance, speed-up, and whether the texts agree.</summary>
    public static void Print(TextWriter o, string what, Outcome x)
    {
        var s = x.Statistics;
        o.WriteLine($"speculative ({what}): {s.TokensPerStep:F2} tokens per target pass ({s.Accepted} of {s.Drafted} drafted accepted), " +
            $"{x.Speculative.Mean / x.Plain.Mean:F2}x plain greedy decoding; greedy tokens identical: {(x.Identical ? "yes" : "NO")}");
        if (x.PassCost.Count > 0)
            o.WriteLine("verification pass cost in one-token decode steps: " + string.Join(", ", x.PassCost.Select(c => $"{c.Rows} rows {c.Ratio:F2}")));
    }
}
