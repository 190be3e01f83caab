using FitLM.Tensors;

namespace FitLM.Tests.Kernels;

/// <summary>Seeded test data and error measures shared by the kernel tests.</summary>
internal static class KernelTestData
{
    public static readonly GgmlType[] AllTypes =
    {
        GgmlType.F32, GgmlType.F16, GgmlType.BF16,
        GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.Q8_0, GgmlType.Q8_1,
        GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K, GgmlType.Q8_K,
    };

    public static IEnumerable<object[]> AllTypeData() => AllTypes.Select(t => new object[] { t });

    public static IEnumerable<object[]> BlockTypeData() =>
        AllTypes.Where(t => GgmlTypes.BlockSize(t) > 1).Select(t => new object[] { t });

    /// <summary>Standard normal samples (Box-Muller), deterministic for a seed.</summary>
    public static float[] Gaussian(int n, int seed, float scale = 1f)
    {
        var rng = new Random(seed);
        var a = new float[n];
        for (int i = 0; i < n; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            a[i] = scale * (float)(Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return a;
    }

    /// <summary>
    /// Weight-like rows: Gaussian with a per-row scale (1e-3 .. 10) and an occasional outlier, so blocks differ
    /// in range; row count odd, row length several blocks.
    /// </summary>
    public static float[][] WeightRows(GgmlType type, int rows, int blocksPerRow, int seed)
    {
        int n = Math.Max(GgmlTypes.BlockSize(type), 32) * blocksPerRow;
        if (GgmlTypes.BlockSize(type) == 1) n = 32 * blocksPerRow + 3; // float types: any length
        var rng = new Random(seed);
        var result = new float[rows][];
        for (int r = 0; r < rows; r++)
        {
            float scale = (float)Math.Pow(10, -3 + 4 * rng.NextDouble());
            var row = Gaussian(n, seed * 1000 + r, scale);
            for (int k = 0; k < n / 97; k++) row[rng.Next(n)] *= 4;
            result[r] = row;
        }
        return result;
    }

    public static byte[] QuantizeRow(GgmlType type, float[] x)
    {
        var bytes = new byte[GgmlTypes.RowBytes(type, x.Length)];
        Quantize.Row(type, x, bytes);
        return bytes;
    }

    public static float[] DequantizeRow(GgmlType type, byte[] bytes, int n)
    {
        var y = new float[n];
        Dequantize.Row(type, bytes, y);
        return y;
    }

    /// <summary>Random block bytes with every half/float scale field overwritten by a sane random value.</summary>
    public static byte[] RandomBlocks(GgmlType type, int blocks, int seed)
    {
        var rng = new Random(seed);
        int bb = GgmlTypes.BlockBytes(type);
        var bytes = new byte[bb * blocks];
        rng.NextBytes(bytes);
        for (int b = 0; b < blocks; b++)
        {
            var blk = bytes.AsSpan(b * bb, bb);
            foreach (int off in HalfFieldOffsets(type))
                BitConverter.TryWriteBytes(blk.Slice(off, 2), BitConverter.HalfToUInt16Bits((Half)(float)((rng.NextDouble() - 0.3) * 0.1)));
            if (type == GgmlType.Q8_K) BitConverter.TryWriteBytes(blk[..4], (float)((rng.NextDouble() - 0.5) * 0.02));
        }
        return bytes;
    }

    private static int[] HalfFieldOffsets(GgmlType type) => type switch
    {
        GgmlType.Q4_0 or GgmlType.Q5_0 or GgmlType.Q8_0 => new[] { 0 },
        GgmlType.Q4_1 or GgmlType.Q5_1 or GgmlType.Q8_1 => new[] { 0, 2 },
        GgmlType.Q2_K => new[] { 80, 82 },
        GgmlType.Q3_K => new[] { 108 },
        GgmlType.Q4_K or GgmlType.Q5_K => new[] { 0, 2 },
        GgmlType.Q6_K => new[] { 208 },
        _ => Array.Empty<int>(),
    };

    public static double Rms(ReadOnlySpan<float> a)
    {
        double s = 0;
        foreach (float v in a) s += (double)v * v;
        return Math.Sqrt(s / Math.Max(1, a.Length));
    }

    public static double RmsDiff(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++) { double d = (double)a[i] - b[i]; s += d * d; }
        return Math.Sqrt(s / Math.Max(1, a.Length));
    }

    /// <summary>Σ a*x in double, and Σ |a*x| (the scale against which float32 accumulation error is judged).</summary>
    public static (double dot, double absSum) ExactDot(ReadOnlySpan<float> a, ReadOnlySpan<float> x)
    {
        double s = 0, abs = 0;
        for (int i = 0; i < a.Length; i++) { double p = (double)a[i] * x[i]; s += p; abs += Math.Abs(p); }
        return (s, abs);
    }

    public static ushort HalfBits(float v) => BitConverter.HalfToUInt16Bits((Half)v);

    public static void PutHalf(byte[] b, int offset, float v) =>
        BitConverter.TryWriteBytes(b.AsSpan(offset, 2), HalfBits(v));
}
