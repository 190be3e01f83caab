using Xunit;
using FitLM.Model;
using static FitLM.Tests.Training.GradientCheck;

namespace FitLM.Tests.Training;

/// <summary>
/// RoPE is linear in its input, so the central difference (Apply(x + h eᵢ) − Apply(x − h eᵢ)) / 2h is column i of
/// its Jacobian J; the backward pass's ApplyTransposed(g) must be Jᵀ g, for both pair layouts and partial rotation.
/// </summary>
public class RopeGradientTests
{
    [Theory]
    [InlineData(RopeStyle.Interleaved, 8, 0, 3)]
    [InlineData(RopeStyle.Neox, 8, 0, 3)]
    [InlineData(RopeStyle.Interleaved, 16, 0, 1)]
    [InlineData(RopeStyle.Neox, 12, 8, 2)]   // partial rotary: dims 8..11 of each head pass through
    [InlineData(RopeStyle.Interleaved, 12, 4, 2)]
    [InlineData(RopeStyle.Neox, 16, 6, 3)]
    public void TransposeIsTheJacobianTransposed(RopeStyle style, int headDim, int ropeDims, int heads)
    {
        var c = Config(headDim: headDim, heads: heads, kvHeads: heads, dim: heads * headDim, rope: style, ropeDims: ropeDims);
        var rope = new Rope(c, 64);
        var rng = new Random(headDim * 7 + ropeDims + (int)style);
        int d = heads * headDim, rotated = c.RopeDims, half = rotated / 2;
        foreach (int pos in new[] { 0, 1, 5, 63 })
        {
            var x = Uniform(rng, d);

            // Forward against the rotation written out in double.
            var y = (float[])x.Clone();
            rope.Apply(y, heads, headDim, pos);
            for (int h = 0; h < heads; h++)
            {
                int o = h * headDim;
                for (int i = 0; i < half; i++)
                {
                    double angle = pos * Math.Pow(c.RopeTheta, -2.0 * i / rotated);
                    var (a, b) = style == RopeStyle.Interleaved ? (o + 2 * i, o + 2 * i + 1) : (o + i, o + i + half);
                    double ya = x[a] * Math.Cos(angle) - x[b] * Math.Sin(angle), yb = x[a] * Math.Sin(angle) + x[b] * Math.Cos(angle);
                    Assert.True(Math.Abs(y[a] - ya) < 2e-5 && Math.Abs(y[b] - yb) < 2e-5, $"pos {pos} head {h} pair {i}: ({y[a]}, {y[b]}) vs ({ya}, {yb})");
                }
                for (int i = rotated; i < headDim; i++) Assert.Equal(x[o + i], y[o + i]);
            }

            // Jacobian columns by central differences (h = 0.5: exact up to rounding for a linear map).
            var jacobian = new double[d, d];
            for (int i = 0; i < d; i++)
            {
                var plus = (float[])x.Clone();
                var minus = (float[])x.Clone();
                plus[i] += 0.5f;
                minus[i] -= 0.5f;
                rope.Apply(plus, heads, headDim, pos);
                rope.Apply(minus, heads, headDim, pos);
                for (int j = 0; j < d; j++) jacobian[j, i] = ((double)plus[j] - minus[j]) / 1.0;
            }
            var g = Uniform(rng, d);
            var expected = new double[d];
            for (int i = 0; i < d; i++)
                for (int j = 0; j < d; j++) expected[i] += jacobian[j, i] * g[j];
            var actual = (float[])g.Clone();
            rope.ApplyTransposed(actual, heads, headDim, pos);
            AssertClose(expected, actual, 1e-5, $"{style} pos {pos} Jᵀg");

            // And it undoes Apply (the rotation is orthogonal).
            var back = (float[])y.Clone();
            rope.ApplyTransposed(back, heads, headDim, pos);
            for (int i = 0; i < d; i++) Assert.True(Math.Abs(back[i] - x[i]) < 1e-5, $"ApplyTransposed(Apply(x))[{i}] = {back[i]} vs {x[i]}");
        }
    }
}
