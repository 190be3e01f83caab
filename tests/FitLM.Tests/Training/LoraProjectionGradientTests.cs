using Xunit;
using FitLM.Adapters;
using FitLM.Tensors;
using FitLM.Training;
using static FitLM.Tests.Training.GradientCheck;

namespace FitLM.Tests.Training;

/// <summary>y = W x + s · B (A x) with an F32 base: forward, and dA, dB, dX against central differences in double.</summary>
public class LoraProjectionGradientTests
{
    private static double Loss(float[] w, double[] a, double[] b, double[] x, float[] dy, int n, int inputs, int outputs, int rank, float s)
    {
        double loss = 0;
        var ax = new double[rank];
        for (int t = 0; t < n; t++)
        {
            for (int r = 0; r < rank; r++)
            {
                ax[r] = 0;
                for (int i = 0; i < inputs; i++) ax[r] += a[r * inputs + i] * x[t * inputs + i];
            }
            for (int o = 0; o < outputs; o++)
            {
                double y = 0;
                for (int i = 0; i < inputs; i++) y += w[o * inputs + i] * x[t * inputs + i];
                for (int r = 0; r < rank; r++) y += s * b[o * rank + r] * ax[r];
                loss += y * dy[t * outputs + o];
            }
        }
        return loss;
    }

    [Theory]
    [InlineData(13, 11, 3, 4)]
    [InlineData(32, 48, 8, 7)]
    [InlineData(5, 7, 1, 1)]
    [InlineData(70, 9, 4, 3)]
    public void BackwardMatchesCentralDifferences(int inputs, int outputs, int rank, int n)
    {
        var rng = new Random(inputs * 1000 + outputs * 10 + rank);
        const float s = 2f;
        var w = Uniform(rng, outputs * inputs);
        using var weight = Matrix("blk.0.attn_q.weight", GgmlType.F32, w, outputs, inputs);
        var pair = new LoraPair("blk.0.attn_q.weight", rank, inputs, outputs);
        Uniform(rng, pair.A.Length).CopyTo(pair.A, 0);
        Uniform(rng, pair.B.Length).CopyTo(pair.B, 0);
        var trainable = new TrainablePair(pair);
        var gradA0 = Uniform(rng, pair.A.Length);
        var gradB0 = Uniform(rng, pair.B.Length);
        gradA0.CopyTo(trainable.GradA, 0); // gradients are summed into: start from something
        gradB0.CopyTo(trainable.GradB, 0);
        var projection = new LoraProjection(weight, trainable, s);
        var scratch = new TrainingScratch();

        var x = Uniform(rng, n * inputs);
        var y = new float[n * outputs];
        var ax = new float[n * rank];
        projection.Forward(x, y, n, ax, scratch);
        var ad = ToDouble(pair.A);
        var bd = ToDouble(pair.B);
        var xd = ToDouble(x);
        for (int t = 0; t < n; t++)
            for (int o = 0; o < outputs; o++)
            {
                var dy1 = new float[n * outputs];
                dy1[t * outputs + o] = 1;
                double expected = Loss(w, ad, bd, xd, dy1, n, inputs, outputs, rank, s);
                Assert.True(Math.Abs(y[t * outputs + o] - expected) <= 1e-5 * (1 + Math.Abs(expected)), $"y[{t},{o}] = {y[t * outputs + o]} vs {expected}");
            }

        var dy = Uniform(rng, n * outputs);
        var dx0 = Uniform(rng, n * inputs);
        var dx = (float[])dx0.Clone();
        projection.Backward(x, ax, dy, dx, n, scratch);
        for (int i = 0; i < dx.Length; i++) dx[i] -= dx0[i];
        var dA = trainable.GradA.Select((g, i) => g - gradA0[i]).ToArray();
        var dB = trainable.GradB.Select((g, i) => g - gradB0[i]).ToArray();

        double L() => Loss(w, ad, bd, xd, dy, n, inputs, outputs, rank, s);
        AssertClose(CentralDifferences(ad, L), dA, 1e-4, "dA");
        AssertClose(CentralDifferences(bd, L), dB, 1e-4, "dB");
        AssertClose(CentralDifferences(xd, L), dx, 1e-4, "dX");
    }

    [Fact]
    public void ProjectionWithoutLoraOnlyPassesTheInputGradient()
    {
        var rng = new Random(5);
        int inputs = 9, outputs = 6, n = 2;
        var w = Uniform(rng, outputs * inputs);
        using var weight = Matrix("blk.0.ffn_up.weight", GgmlType.F32, w, outputs, inputs);
        var projection = new LoraProjection(weight, null, 0f);
        var dy = Uniform(rng, n * outputs);
        var dx = new float[n * inputs];
        projection.Backward(Uniform(rng, n * inputs), [], dy, dx, n, new TrainingScratch());
        var expected = new double[n * inputs];
        for (int t = 0; t < n; t++)
            for (int i = 0; i < inputs; i++)
                for (int o = 0; o < outputs; o++) expected[t * inputs + i] += (double)dy[t * outputs + o] * w[o * inputs + i];
        AssertClose(expected, dx, 1e-5, "dX");
    }
}
