using Xunit;
using FitLM.Training;

namespace FitLM.Tests.Training;

/// <summary>AdamW's update written out as torch.optim.AdamW documents it, in double, and the learning-rate schedule.</summary>
public class AdamWTests
{
    [Fact]
    public void ThreeStepsFollowTheDocumentedUpdateWithDecoupledWeightDecay()
    {
        const double lr = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
        var p = new float[] { 0.5f, -1.2f, 2f, 0f };
        var expected = p.Select(v => (double)v).ToArray();
        var m = new double[p.Length];
        var v = new double[p.Length];
        var adam = new AdamW([p.Length]) { WeightDecay = (float)wd };
        var rng = new Random(3);
        for (int t = 1; t <= 3; t++)
        {
            var g = Enumerable.Range(0, p.Length).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
            adam.Update([(p, g)], (float)lr);
            for (int i = 0; i < p.Length; i++)
            {
                expected[i] *= 1 - lr * wd;
                m[i] = b1 * m[i] + (1 - b1) * g[i];
                v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
                double mHat = m[i] / (1 - Math.Pow(b1, t)), vHat = v[i] / (1 - Math.Pow(b2, t));
                expected[i] -= lr * mHat / (Math.Sqrt(vHat) + eps);
                Assert.True(Math.Abs(p[i] - expected[i]) < 1e-6, $"step {t} p[{i}] = {p[i]} vs {expected[i]}");
            }
        }
        Assert.Equal(3, adam.Step);
    }

    [Fact]
    public void ScheduleWarmsUpLinearlyThenDecaysToZero()
    {
        var s = new LearningRateSchedule(1f, 4, 14, Cosine: true);
        Assert.Equal([0.25f, 0.5f, 0.75f, 1f], Enumerable.Range(0, 4).Select(i => s.At(i)).ToArray());
        Assert.Equal(1f, s.At(4));
        Assert.Equal(0.5f, s.At(9), 5);
        Assert.Equal(0f, s.At(14), 6);
        var constant = new LearningRateSchedule(0.1f, 0, 10, Cosine: false);
        Assert.Equal(0.1f, constant.At(9));
    }
}
