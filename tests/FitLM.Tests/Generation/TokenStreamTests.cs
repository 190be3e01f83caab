using FitLM.Generation;
using FitLM.Memory;
using Xunit;

namespace FitLM.Tests.Generation;

/// <summary>The one token loop (Generator's and the server's): penalties, logprobs, stop strings, limits.</summary>
public class TokenStreamTests
{
    private static readonly Lazy<LanguageModel> Model = new(() => LanguageModel.Load(TestPaths.DemoModel, new LoadOptions { ContextLength = 64, LogitRows = 1 }));

    [Fact]
    public void FrequencyAndPresencePenaltiesSubtractCountTimesFrequencyPlusPresence()
    {
        var s = new Sampler(new SamplingOptions { Temperature = 0, FrequencyPenalty = 0.5f, PresencePenalty = 0.25f }, 4);
        float[] logits = [1f, 1f, 1f, 1f];
        // History: prompt [3, 3] then generated [0, 0, 0, 1]: the prompt's tokens are not penalized.
        s.Penalize(logits, [3, 3, 0, 0, 0, 1], generated: 4);
        Assert.Equal(new[] { 1f - 3 * 0.5f - 0.25f, 1f - 0.5f - 0.25f, 1f, 1f }, logits);
    }

    [Fact]
    public void LogitBiasIsAddedAndOutOfVocabularyIdsAreRefused()
    {
        var s = new Sampler(new SamplingOptions { Temperature = 0, LogitBias = new Dictionary<int, float> { [2] = 5f } }, 3);
        Assert.Equal(2, s.Sample([1f, 2f, 0f], []));
        Assert.Throws<FitLMException>(() => new Sampler(new SamplingOptions { LogitBias = new Dictionary<int, float> { [3] = 1f } }, 3));
        Assert.Throws<FitLMException>(() => new SamplingOptions { PresencePenalty = 3 }.Validate());
    }

    [Fact]
    public void LogprobsAreTheLogSoftmaxOfThePenalizedLogitsBeforeTemperature()
    {
        var lm = Model.Value;
        int vocab = lm.Config.Vocab;
        var rng = new Random(3);
        var logits = Enumerable.Range(0, vocab).Select(_ => (float)(rng.NextDouble() * 8)).ToArray();
        int[] prompt = [5, 6];
        var options = new SamplingOptions { Temperature = 0.7f, Seed = 1, FrequencyPenalty = 1f };
        var stream = new TokenStream(prompt, 4, 64, options, null, lm.Tokenizer, vocab, logprobs: 5);

        // Two steps, the second after the first token is in the history (so the frequency penalty applies to it).
        var first = stream.Next((float[])logits.Clone());
        var penalized = (float[])logits.Clone();
        penalized[first.Id] -= 1f;
        var second = stream.Next((float[])logits.Clone());
        var lp = (first.Logprobs ?? []).Concat(second.Logprobs ?? []).ToList();
        // Tokens are released with their text; an empty-text token may wait, so look up by what arrived.
        foreach (var (t, expectedLogits) in lp.Zip(new[] { logits, penalized }))
        {
            double lse = Math.Log(expectedLogits.Sum(x => Math.Exp(x - expectedLogits.Max()))) + expectedLogits.Max();
            Assert.Equal(expectedLogits[t.Id] - lse, t.Logprob, 3);
            Assert.Equal(5, t.Top.Length);
            var best = expectedLogits.Select((x, i) => (x, i)).OrderByDescending(p => p.x).Take(5).Select(p => p.i).ToArray();
            Assert.Equal(best, t.Top.Select(x => x.Id).ToArray());
            Assert.True(t.Top[0].Logprob >= t.Top[4].Logprob);
        }
        Assert.NotEmpty(lp);
    }

    [Fact]
    public void AStopStringEndsTheTextAndDropsTheLogprobsOfTokensInsideIt()
    {
        var lm = Model.Value;
        var tok = lm.Tokenizer;
        int[] text = tok.Encode("ab\n\ncd", addSpecial: false, parseSpecial: false);
        var stream = new TokenStream([tok.BosId], 16, 64, SamplingOptions.Greedy, ["\n\n"], tok, lm.Config.Vocab, logprobs: 0);
        var emitted = new System.Text.StringBuilder();
        var logprobs = new List<TokenLogprob>();
        foreach (int id in text)
        {
            var step = stream.Next(OneHot(id, lm.Config.Vocab));
            emitted.Append(step.Text);
            if (step.Logprobs != null) logprobs.AddRange(step.Logprobs);
            if (step.Done) break;
        }
        Assert.True(stream.Done);
        Assert.Equal(StopReason.StopString, stream.StopReason);
        Assert.Equal("ab", emitted.ToString());
        Assert.Equal("ab", string.Concat(logprobs.Select(l => tok.Decode([l.Id]))));
    }

    [Fact]
    public void MaxTokensAndTheContextEndTheStreamAndHeldTextIsFlushed()
    {
        var lm = Model.Value;
        var tok = lm.Tokenizer;
        int vocab = lm.Config.Vocab;
        int[] ids = tok.Encode("x = 1\n", addSpecial: false, parseSpecial: false);
        // Held back for the stop string "\n\n" at the last token, then released at max tokens.
        var stream = new TokenStream([tok.BosId], ids.Length, 64, SamplingOptions.Greedy, ["\n\n"], tok, vocab);
        string all = string.Concat(ids.Select(id => stream.Next(OneHot(id, vocab)).Text));
        Assert.Equal("x = 1\n", all);
        Assert.Equal(StopReason.Length, stream.StopReason);

        var full = new TokenStream([tok.BosId, 10, 11], 100, 5, SamplingOptions.Greedy, null, tok, vocab);
        full.Next(OneHot(ids[0], vocab));
        Assert.False(full.Done);
        full.Next(OneHot(ids[1], vocab));
        Assert.True(full.Done);
        Assert.Equal(StopReason.ContextFull, full.StopReason);
        Assert.Equal(5, full.Position);
    }

    [Fact]
    public void ALimitPastTheContextHoldsOnlyWhatTheContextCan()
    {
        // A library caller's int.MaxValue asked for an int[prompt + int.MaxValue] (an overflow or a 8 GiB array).
        var lm = Model.Value;
        var stream = new TokenStream([5, 6], int.MaxValue, 64, SamplingOptions.Greedy, null, lm.Tokenizer, lm.Config.Vocab);
        Assert.Equal(64, stream.History.Length);
        var generated = new Generator(lm).Generate([5, 6], int.MaxValue, SamplingOptions.Greedy).ToList();
        Assert.InRange(generated.Count(t => t.Id >= 0), 1, 62);
    }

    [Fact]
    public void GeneratorRunsTheStreamAndReportsItsStop()
    {
        var lm = Model.Value;
        var gen = new Generator(lm);
        var prompt = lm.Tokenizer.Encode("import os\n", addSpecial: true, parseSpecial: true);
        var tokens = gen.Generate(prompt, 6, SamplingOptions.Greedy).ToList();
        Assert.Equal(6, tokens.Count(t => t.Id >= 0));
        Assert.Equal(StopReason.Length, gen.LastStopReason);
        // A frequency penalty changes a greedy continuation that repeats itself.
        var rep = lm.Tokenizer.Encode("x = 1\nx = 1\nx = 1\n", addSpecial: true, parseSpecial: true);
        string plain = string.Concat(gen.Generate(rep, 12, SamplingOptions.Greedy).Select(t => t.Text));
        string penalized = string.Concat(gen.Generate(rep, 12, SamplingOptions.Greedy with { FrequencyPenalty = 2, PresencePenalty = 2 }).Select(t => t.Text));
        Assert.NotEqual(plain, penalized);
    }

    private static float[] OneHot(int id, int vocab)
    {
        var l = new float[vocab];
        l[id] = 10f;
        return l;
    }
}
