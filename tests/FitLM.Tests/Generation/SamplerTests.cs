using System.Text;
using FitLM.Generation;
using Xunit;

namespace FitLM.Tests.Generation;

public class SamplerTests
{
    private static float[] Logits(params float[] x) => x;

    private static Dictionary<int, int> Histogram(SamplingOptions o, float[] logits, int draws = 4000)
    {
        var s = new Sampler(o, logits.Length);
        var h = new Dictionary<int, int>();
        for (int i = 0; i < draws; i++)
        {
            int id = s.Sample((float[])logits.Clone(), []);
            h[id] = h.GetValueOrDefault(id) + 1;
        }
        return h;
    }

    [Fact]
    public void GreedyPicksTheLargestLogit()
    {
        var s = new Sampler(SamplingOptions.Greedy, 5);
        Assert.Equal(3, s.Sample(Logits(0.1f, 2f, -1f, 5f, 4.9f), []));
    }

    [Fact]
    public void TopKKeepsOnlyTheKBest()
    {
        var h = Histogram(new SamplingOptions { Temperature = 1, TopK = 2, TopP = 1, MinP = 0, Seed = 3 }, Logits(1f, 1.1f, 0.9f, 1.05f));
        Assert.Equal(new[] { 1, 3 }, h.Keys.Order());
    }

    [Fact]
    public void TopPKeepsTheSmallestSetReachingP()
    {
        // probabilities ≈ 0.64, 0.24, 0.09, 0.03: top-p 0.8 keeps the first two.
        var h = Histogram(new SamplingOptions { Temperature = 1, TopK = 0, TopP = 0.8f, MinP = 0, Seed = 3 }, Logits(3f, 2f, 1f, 0f));
        Assert.Equal(new[] { 0, 1 }, h.Keys.Order());
        Assert.InRange(h[0] / (double)(h[0] + h[1]), 0.68, 0.78); // 0.64/(0.64+0.24) = 0.73
    }

    [Fact]
    public void MinPDropsTokensFarBelowTheBest()
    {
        // p ≈ 0.64, 0.24, 0.09, 0.03; min-p 0.2 keeps p ≥ 0.128: the first two.
        var h = Histogram(new SamplingOptions { Temperature = 1, TopK = 0, TopP = 1, MinP = 0.2f, Seed = 3 }, Logits(3f, 2f, 1f, 0f));
        Assert.Equal(new[] { 0, 1 }, h.Keys.Order());
    }

    [Fact]
    public void TemperatureSharpensAndFlattens()
    {
        var cold = Histogram(new SamplingOptions { Temperature = 0.25f, TopK = 0, TopP = 1, MinP = 0, Seed = 5 }, Logits(1f, 0f));
        var hot = Histogram(new SamplingOptions { Temperature = 4f, TopK = 0, TopP = 1, MinP = 0, Seed = 5 }, Logits(1f, 0f));
        Assert.True(cold[0] > 0.95 * 4000); // e^4 : 1
        Assert.InRange(hot[0] / 4000.0, 0.52, 0.62); // e^0.25/(1+e^0.25) = 0.56
    }

    [Fact]
    public void SameSeedSameDraws()
    {
        var o = new SamplingOptions { Temperature = 1, Seed = 42 };
        var logits = Enumerable.Range(0, 100).Select(i => (float)Math.Sin(i)).ToArray();
        var a = new Sampler(o, 100);
        var b = new Sampler(o, 100);
        for (int i = 0; i < 50; i++) Assert.Equal(a.Sample((float[])logits.Clone(), []), b.Sample((float[])logits.Clone(), []));
    }

    [Fact]
    public void RepetitionPenaltyDemotesRecentTokensOnce()
    {
        var s = new Sampler(new SamplingOptions { Temperature = 0, RepeatPenalty = 2f }, 3);
        var logits = Logits(4f, 3f, -1f);
        // Token 0 seen twice: divided by 2 once (4 → 2), so token 1 wins; negative logits are multiplied.
        Assert.Equal(1, s.Sample(logits, [0, 0, 2]));
        Assert.Equal(2f, logits[0]);
        Assert.Equal(-2f, logits[2]);
    }

    [Fact]
    public void InvalidOptionsAreRejected()
    {
        Assert.Throws<FitLMException>(() => new SamplingOptions { Temperature = -1 }.Validate());
        Assert.Throws<FitLMException>(() => new SamplingOptions { TopP = 0 }.Validate());
        Assert.Throws<FitLMException>(() => new SamplingOptions { MinP = 2 }.Validate());
        Assert.Throws<FitLMException>(() => new SamplingOptions { RepeatPenalty = 0 }.Validate());
    }
}

public class StopStringTests
{
    private static (string emitted, bool stopped) Stream(string[] pieces, string[] stops)
    {
        var pending = new StringBuilder();
        var all = new StringBuilder();
        foreach (var p in pieces)
        {
            pending.Append(p);
            var (emit, stopped) = StopStrings.Split(pending, stops);
            all.Append(emit);
            if (stopped) return (all.ToString(), true);
        }
        return (all.Append(pending).ToString(), false);
    }

    [Fact]
    public void StopStringSplitAcrossPiecesIsCaughtAndNotEmitted()
    {
        var (text, stopped) = Stream(["def f", "():\n  ret", "urn 1\n\nde", "f g():"], ["\n\ndef"]);
        Assert.True(stopped);
        Assert.Equal("def f():\n  return 1", text);
    }

    [Fact]
    public void PartialMatchesAreHeldBackThenReleased()
    {
        var pending = new StringBuilder("abc\n");
        var (emit, stopped) = StopStrings.Split(pending, ["\n\n"]);
        Assert.False(stopped);
        Assert.Equal("abc", emit);
        Assert.Equal("\n", pending.ToString());
        var (text, stop2) = Stream(["abc\n", "x"], ["\n\n"]);
        Assert.False(stop2);
        Assert.Equal("abc\nx", text);
    }

    [Fact]
    public void EarliestOfSeveralStopStringsWins()
    {
        var (text, stopped) = Stream(["one END two STOP"], ["STOP", "END"]);
        Assert.True(stopped);
        Assert.Equal("one ", text);
    }
}
