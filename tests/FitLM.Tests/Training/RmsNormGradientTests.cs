using Xunit;
using FitLM.Training;
using static FitLM.Tests.Training.GradientCheck;

namespace FitLM.Tests.Training;

/// <summary>RMSNorm's forward and input gradient against central differences of a double-precision RMSNorm.</summary>
public class RmsNormGradientTests
{
    private const float Eps = 1e-5f;

    private static double Loss(double[] x, float[] w, float[] dy, int n)
    {
        int d = w.Length;
        double loss = 0;
        for (int t = 0; t < n; t++)
        {
            double ss = 0;
            for (int i = 0; i < d; i++) ss += x[t * d + i] * x[t * d + i];
            double r = 1 / Math.Sqrt(ss / d + Eps);
            for (int i = 0; i < d; i++) loss += x[t * d + i] * r * w[i] * dy[t * d + i];
        }
        return loss;
    }

    [Theory]
    [InlineData(1, 8, 1.0)]
    [InlineData(3, 17, 2.0)]
    [InlineData(2, 64, 0.5)]
    [InlineData(4, 5, 3e-3)] // rows small enough that ε changes the gradient
    public void BackwardMatchesCentralDifferences(int n, int d, double scale)
    {
        var rng = new Random(1000 + d);
        var x = Uniform(rng, n * d, scale);
        var w = Between(rng, d, 0.5, 1.5);
        var dy = Uniform(rng, n * d);

        // Forward agrees with the double reference (dy = one-hot rows would be slow; compare y directly).
        var y = new float[n * d];
        RmsNormGradient.Forward(x, w, y, n, Eps);
        var xd = ToDouble(x);
        for (int t = 0; t < n; t++)
        {
            double ss = 0;
            for (int i = 0; i < d; i++) ss += xd[t * d + i] * xd[t * d + i];
            double r = 1 / Math.Sqrt(ss / d + Eps);
            for (int i = 0; i < d; i++)
                Assert.True(Math.Abs(y[t * d + i] - xd[t * d + i] * r * w[i]) <= 1e-5 * (1 + Math.Abs(xd[t * d + i] * r * w[i])), $"y[{t},{i}]");
        }

        // Backward adds to dx: start from a non-zero dx and take the difference.
        var start = Uniform(rng, n * d);
        var dx = (float[])start.Clone();
        RmsNormGradient.Backward(x, w, dy, dx, n, Eps, new float[d]);
        for (int i = 0; i < dx.Length; i++) dx[i] -= start[i];

        double h = 1e-6 * scale;
        var fd = CentralDifferences(xd, () => Loss(xd, w, dy, n), h);
        AssertClose(fd, dx, 2e-4, "dx");
    }
}
