using FitLM.Training;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Training;

/// <summary>MeZO's directions: standard normal (moments, the 1σ mass), the two Box–Muller halves uncorrelated, one seed one sequence.</summary>
public sealed class GaussianStreamTests(ITestOutputHelper output)
{
    [Fact]
    public void DrawsAreStandardNormalAndReproducible()
    {
        const int n = 16384, blocks = 64;
        var z = new float[n];
        var scratch = new float[GaussianStream.ScratchFor(n)];
        var g = new GaussianStream(42);
        double m1 = 0, m2 = 0, m4 = 0, within = 0, cross = 0;
        for (int b = 0; b < blocks; b++)
        {
            g.Fill(z, scratch);
            for (int i = 0; i < n; i++)
            {
                double x = z[i];
                (m1, m2, m4) = (m1 + x, m2 + x * x, m4 + x * x * x * x);
                if (Math.Abs(x) < 1) within++;
            }
            for (int i = 0; i < n / 2; i++) cross += (double)z[i] * z[i + n / 2];
        }
        double count = (double)n * blocks;
        (m1, m2, m4, within, cross) = (m1 / count, m2 / count, m4 / count, within / count, cross / (count / 2));
        output.WriteLine($"mean {m1:F4}, variance {m2:F4}, 4th moment {m4:F4}, P(|z| < 1) {within:F4}, E[cos-half · sin-half] {cross:F4}");
        Assert.True(Math.Abs(m1) < 0.005, $"mean {m1}");
        Assert.True(Math.Abs(m2 - 1) < 0.01, $"variance {m2}");
        Assert.True(Math.Abs(m4 - 3) < 0.06, $"4th moment {m4}");
        Assert.True(Math.Abs(within - 0.682689) < 0.003, $"P(|z| < 1) = {within}");
        Assert.True(Math.Abs(cross) < 0.01, $"the halves correlate: {cross}");

        // An odd tail and a fresh stream of the same seed give the same numbers.
        var again = new GaussianStream(42);
        var first = new float[n];
        again.Fill(first, scratch);
        var check = new GaussianStream(42);
        var same = new float[n];
        check.Fill(same, scratch);
        Assert.Equal(first, same);
        var shortDraw = new float[10];
        new GaussianStream(7).Fill(shortDraw, scratch);
        Assert.All(shortDraw, x => Assert.True(float.IsFinite(x) && x != 0));
    }
}
