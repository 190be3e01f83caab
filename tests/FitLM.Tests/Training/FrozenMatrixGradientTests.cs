using Xunit;
using FitLM.Tensors;
using FitLM.Training;
using static FitLM.Tests.Training.GradientCheck;

namespace FitLM.Tests.Training;

/// <summary>
/// QLoRA's input gradient through a frozen matrix in its stored type: dX += dY · W must equal the product with
/// the dequantized W written out in double, over tile boundaries (rows not a multiple of the tile) and for one token.
/// </summary>
public class FrozenMatrixGradientTests
{
    [Theory]
    [InlineData(GgmlType.Q8_0, 37, 96, 3)]
    [InlineData(GgmlType.Q8_0, 300, 512, 5)]  // tiles of 128 rows: 128, 128, 44
    [InlineData(GgmlType.Q4_K, 37, 256, 3)]
    [InlineData(GgmlType.Q4_K, 45, 2048, 2)]  // tiles of 32 rows: 32, 13
    [InlineData(GgmlType.Q6_K, 300, 512, 1)]
    [InlineData(GgmlType.Q6_K, 19, 256, 4)]
    [InlineData(GgmlType.BF16, 131, 72, 3)]
    [InlineData(GgmlType.F16, 77, 40, 6)]
    [InlineData(GgmlType.F32, 21, 30, 2)]
    public void AccumulatesDyTimesDequantizedW(GgmlType type, int rows, int cols, int n)
    {
        var rng = new Random(rows * 7 + cols + (int)type);
        using var w = Matrix("blk.0.ffn_down.weight", type, Uniform(rng, rows * cols), rows, cols);
        var deq = Dequantized(w);
        var dy = Uniform(rng, n * rows);
        var dx0 = Uniform(rng, n * cols);
        var dx = (float[])dx0.Clone();
        var frozen = new FrozenMatrixGradient();
        frozen.Accumulate(w, dy, n, dx);

        var expected = new double[n * cols];
        for (int t = 0; t < n; t++)
            for (int r = 0; r < rows; r++)
            {
                double g = dy[t * rows + r];
                for (int c = 0; c < cols; c++) expected[t * cols + c] += g * deq[(long)r * cols + c];
            }
        for (int i = 0; i < dx.Length; i++) dx[i] -= dx0[i];
        AssertClose(expected, dx, 1e-5, $"{type} dX");

        // Scratch is reused: a second, smaller call on the same object gives the same product.
        var again = new float[cols];
        frozen.Accumulate(w, dy.AsSpan(0, rows), 1, again);
        AssertClose(expected.AsSpan(0, cols), again, 1e-5, $"{type} dX (second call)");
    }
}
