using Xunit;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Tensors;
using FitLM.Weights;

namespace FitLM.Tests.Training;

/// <summary>
/// What the finite-difference gradient tests share: seeded random arrays, matrices in a stored type, central
/// differences of a double-precision reference, and one comparison rule.
/// </summary>
internal static class GradientCheck
{
    /// <summary>Uniform values in [−scale, scale).</summary>
    public static float[] Uniform(Random rng, int n, double scale = 1)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)((rng.NextDouble() * 2 - 1) * scale);
        return a;
    }

    /// <summary>Uniform values in [lo, hi).</summary>
    public static float[] Between(Random rng, int n, double lo, double hi)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)(lo + rng.NextDouble() * (hi - lo));
        return a;
    }

    public static double[] ToDouble(ReadOnlySpan<float> a)
    {
        var d = new double[a.Length];
        for (int i = 0; i < a.Length; i++) d[i] = a[i];
        return d;
    }

    public static double Rms(ReadOnlySpan<double> a)
    {
        double s = 0;
        foreach (double v in a) s += v * v;
        return a.Length == 0 ? 0 : Math.Sqrt(s / a.Length);
    }

    /// <summary>(f(x + h eᵢ) − f(x − h eᵢ)) / 2h for every i, in double; x is restored.</summary>
    public static double[] CentralDifferences(double[] x, Func<double> f, double h = 1e-6)
    {
        var g = new double[x.Length];
        for (int i = 0; i < x.Length; i++)
        {
            double keep = x[i];
            x[i] = keep + h;
            double plus = f();
            x[i] = keep - h;
            double minus = f();
            x[i] = keep;
            g[i] = (plus - minus) / (2 * h);
        }
        return g;
    }

    /// <summary>
    /// Asserts |actual − expected| ≤ rel · (|expected| + rms(expected)) element by element: float32 arithmetic
    /// against a double reference differs by a few ulps of the values summed, so the bound scales with both the
    /// element and the typical size of the tensor (an element near zero is judged against the tensor's scale).
    /// </summary>
    public static void AssertClose(ReadOnlySpan<double> expected, ReadOnlySpan<float> actual, double rel, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        double rms = Rms(expected);
        Assert.True(rms > 0, $"{what}: the expected gradient is all zero, the check would prove nothing");
        for (int i = 0; i < expected.Length; i++)
        {
            double err = Math.Abs(actual[i] - expected[i]);
            Assert.True(err <= rel * (Math.Abs(expected[i]) + rms),
                $"{what}[{i}] = {actual[i]:G9}, finite differences give {expected[i]:G9} (error {err:E2}, rms {rms:E2})");
        }
    }

    /// <summary>The largest |actual − expected| / (|expected| + rms(expected)), for the messages.</summary>
    public static double WorstError(ReadOnlySpan<double> expected, ReadOnlySpan<float> actual)
    {
        double rms = Rms(expected), worst = 0;
        for (int i = 0; i < expected.Length; i++) worst = Math.Max(worst, Math.Abs(actual[i] - expected[i]) / (Math.Abs(expected[i]) + rms));
        return worst;
    }

    /// <summary>A [rows × cols] matrix of <paramref name="w"/> stored as <paramref name="type"/> (quantized row by row).</summary>
    public static ResidentMatrix Matrix(string name, GgmlType type, float[] w, int rows, int cols)
    {
        long rowBytes = GgmlTypes.RowBytes(type, cols);
        var buf = new NativeBuffer(rowBytes * rows);
        for (int r = 0; r < rows; r++)
            Quantize.Row(type, w.AsSpan(r * cols, cols), buf.Slice(r * rowBytes, (int)rowBytes));
        return new ResidentMatrix(name, type, rows, cols, buf);
    }

    /// <summary>Every row of <paramref name="m"/> as the dequantizer reads it, in double.</summary>
    public static double[] Dequantized(IMatrix m)
    {
        var row = new float[m.Cols];
        var d = new double[(long)m.Rows * m.Cols];
        for (int r = 0; r < m.Rows; r++)
        {
            m.ReadRow(r, row);
            for (int c = 0; c < m.Cols; c++) d[(long)r * m.Cols + c] = row[c];
        }
        return d;
    }

    /// <summary>A Llama-family configuration for tests; options as named arguments.</summary>
    public static ModelConfig Config(int dim = 16, int layers = 2, int heads = 2, int kvHeads = 1, int headDim = 8, int ffn = 24,
        int vocab = 40, RopeStyle rope = RopeStyle.Neox, int ropeDims = 0, FfnActivation act = FfnActivation.Silu,
        bool qkvBias = false, bool qkNorm = false, string arch = "llama") => new()
    {
        Architecture = arch,
        Dim = dim,
        Layers = layers,
        Heads = heads,
        KvHeads = kvHeads,
        HeadDim = headDim,
        FfnDim = ffn,
        Vocab = vocab,
        RopeDims = ropeDims > 0 ? ropeDims : headDim,
        RopeStyle = rope,
        Activation = act,
        QkvBias = qkvBias,
        QkNorm = qkNorm,
        RmsEps = 1e-5f,
        RopeTheta = 10000f,
    };
}
