using FitLM.Tensors;
using Xunit;
using static FitLM.Tests.Kernels.KernelTestData;

namespace FitLM.Tests.Kernels;

/// <summary>
/// MatMul with the integer kernels wired in: decode (MatVec) and prefill (MatMulBatch through the repacked
/// int8 tile) on every reachable path, odd row counts and token counts, against the scalar reference per
/// (row, token); the prefill weight decoder's vector form against its scalar reference, byte for byte.
/// </summary>
public unsafe class IntDotMatMulTests
{
    public static IEnumerable<object[]> IntTypeIsas() => IntDotTests.IntTypeIsas();
    public static IEnumerable<object[]> IntTypeData() => IntDotTests.IntTypeData();

    private static (byte[] w, long rowBytes, int cols) Matrix(GgmlType type, int rows, int blocksPerRow, int seed)
    {
        int cols = Math.Max(32, GgmlTypes.BlockSize(type)) * blocksPerRow;
        long rowBytes = GgmlTypes.RowBytes(type, cols);
        var w = new byte[rowBytes * rows];
        var src = WeightRows(type, rows, blocksPerRow, seed);
        for (int r = 0; r < rows; r++)
        {
            // Half the rows from the quantizer, half random bytes (every code and scale pattern).
            var bytes = r % 2 == 0 ? QuantizeRow(type, src[r]) : RandomBlocks(type, (int)(rowBytes / GgmlTypes.BlockBytes(type)), seed + r);
            bytes.CopyTo(w, r * rowBytes);
        }
        return (w, rowBytes, cols);
    }

    /// <summary>The scalar reference for token t: its own quantization, then IntDot's scalar definition per row.</summary>
    private static float[] Reference(GgmlType type, byte[] w, long rowBytes, int rows, int cols, float[] x, int n)
    {
        var y = new float[n * rows];
        using var act = new QuantizedActivations();
        fixed (byte* pw = w)
        fixed (float* px = x)
            for (int t = 0; t < n; t++)
            {
                ActivationQuant.Quantize(type, px + t * cols, cols, 1, act, vector: false);
                var a = act.Row(0);
                for (int r = 0; r < rows; r++) y[t * rows + r] = IntDot.Dot(type, pw + r * rowBytes, a, cols, IntDot.Isa.Scalar);
            }
        return y;
    }

    /// <summary>Per output, the float-accumulation scale Σ|w·x| (in double).</summary>
    private static double[] AbsSums(GgmlType type, byte[] w, long rowBytes, int rows, int cols, float[] x, int n)
    {
        var s = new double[n * rows];
        for (int r = 0; r < rows; r++)
        {
            var wd = DequantizeRow(type, w.AsSpan((int)(r * rowBytes), (int)GgmlTypes.RowBytes(type, cols)).ToArray(), cols);
            for (int t = 0; t < n; t++)
            {
                double a = 0;
                for (int i = 0; i < cols; i++) a += Math.Abs((double)wd[i] * x[t * cols + i]);
                s[t * rows + r] = a;
            }
        }
        return s;
    }

    [Theory]
    [MemberData(nameof(IntTypeIsas))]
    public void MatVec_MatchesReference(GgmlType type, string isaName)
    {
        var isa = Enum.Parse<IntDot.Isa>(isaName);
        foreach (int rows in new[] { 1, 5, 16, 37 })
        {
            var (w, rowBytes, cols) = Matrix(type, rows, 3, rows);
            var x = Gaussian(cols, rows + 7);
            var expected = Reference(type, w, rowBytes, rows, cols, x, 1);
            var abs = AbsSums(type, w, rowBytes, rows, cols, x, 1);
            var y = new float[rows];
            fixed (byte* pw = w) MatMul.MatVec(type, pw, rowBytes, rows, cols, x, y, isa, FloatDot.Best);
            for (int r = 0; r < rows; r++)
                Assert.True(Math.Abs(y[r] - expected[r]) <= 1e-5 * abs[r] + 1e-20, $"{type} {isa} rows={rows} r={r}: {y[r]} vs {expected[r]}");
        }
    }

    [Theory]
    [MemberData(nameof(IntTypeIsas))]
    public void MatMulBatch_MatchesReference(GgmlType type, string isaName)
    {
        var isa = Enum.Parse<IntDot.Isa>(isaName);
        foreach (var (rows, n) in new[] { (1, 2), (3, 7), (4, 8), (5, 9), (17, 16), (9, 17), (21, 33) })
        {
            var (w, rowBytes, cols) = Matrix(type, rows, 2, 10 * rows + n);
            var x = Gaussian(n * cols, rows * 100 + n);
            var expected = Reference(type, w, rowBytes, rows, cols, x, n);
            var abs = AbsSums(type, w, rowBytes, rows, cols, x, n);
            var y = new float[n * rows];
            fixed (byte* pw = w) MatMul.MatMulBatch(type, pw, rowBytes, rows, cols, x, y, n, isa, FloatDot.Best);
            for (int i = 0; i < y.Length; i++)
                Assert.True(Math.Abs(y[i] - expected[i]) <= 1e-5 * abs[i] + 1e-20,
                    $"{type} {isa} rows={rows} n={n} (t={i / rows}, r={i % rows}): {y[i]} vs {expected[i]}");
        }
    }

    [Theory]
    [MemberData(nameof(IntTypeData))]
    public void MatMulBatch_LongBatch_CrossesTokenBlocks(GgmlType type)
    {
        // More tokens than one tile pass (128) and a row count that is not a multiple of the chunk.
        const int rows = 19, n = 141;
        var (w, rowBytes, cols) = Matrix(type, rows, 1, 77);
        var x = Gaussian(n * cols, 78);
        var expected = Reference(type, w, rowBytes, rows, cols, x, n);
        var abs = AbsSums(type, w, rowBytes, rows, cols, x, n);
        var y = new float[n * rows];
        fixed (byte* pw = w) MatMul.MatMulBatch(type, pw, rowBytes, rows, cols, x, y, n);
        for (int i = 0; i < y.Length; i++)
            Assert.True(Math.Abs(y[i] - expected[i]) <= 1e-5 * abs[i] + 1e-20, $"{type} (t={i / rows}, r={i % rows}): {y[i]} vs {expected[i]}");
    }

    [Theory]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.F16)]
    public void MatVecAndBatch_AllocateNothingOnceWarm(GgmlType type)
    {
        // Buffers are thread-static and sized on first use; the calling thread allocates nothing after that.
        const int rows = 40, n = 20;
        int cols = 512;
        long rowBytes = GgmlTypes.RowBytes(type, cols);
        var w = new byte[rowBytes * rows];
        for (int r = 0; r < rows; r++) QuantizeRow(type, Gaussian(cols, r)).CopyTo(w, r * rowBytes);
        var x = Gaussian(n * cols, 1);
        var y = new float[n * rows];
        fixed (byte* pw = w)
        {
            for (int i = 0; i < 3; i++)
            {
                MatMul.MatVec(type, pw, rowBytes, rows, cols, x.AsSpan(0, cols), y);
                MatMul.MatMulBatch(type, pw, rowBytes, rows, cols, x, y, n);
            }
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 5; i++)
            {
                MatMul.MatVec(type, pw, rowBytes, rows, cols, x.AsSpan(0, cols), y);
                MatMul.MatMulBatch(type, pw, rowBytes, rows, cols, x, y, n);
            }
            Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
        }
    }

    [Theory]
    [MemberData(nameof(IntTypeData))]
    public void PrefillDecoder_VectorEqualsScalar_AndDequantizes(GgmlType type)
    {
        var (w, rowBytes, cols) = Matrix(type, 6, 3, 5);
        int sb = IntGemm.SubBlock(type);
        var uv = new byte[cols]; var us = new byte[cols];
        var sv = new float[cols / 16]; var ss = new float[cols / 16];
        var mv = new float[cols / 16]; var ms = new float[cols / 16];
        for (int r = 0; r < 6; r++)
        {
            fixed (byte* pw = w, puv = uv, pus = us)
            fixed (float* psv = sv, pss = ss, pmv = mv, pms = ms)
            {
                IntGemm.DecodeRow(type, pw + r * rowBytes, cols, puv, psv, pmv, vector: true);
                IntGemm.DecodeRow(type, pw + r * rowBytes, cols, pus, pss, pms, vector: false);
            }
            Assert.Equal(us, uv);
            Assert.Equal(ss, sv);
            Assert.Equal(ms, mv);
            var deq = DequantizeRow(type, w.AsSpan((int)(r * rowBytes), (int)rowBytes).ToArray(), cols);
            for (int i = 0; i < cols; i++)
            {
                float v = ss[i / sb] * (us[i] - 128) + ms[i / sb];
                Assert.True(Math.Abs(v - deq[i]) <= 1e-6f * (Math.Abs(deq[i]) + Math.Abs(ms[i / sb])) + 1e-30f, $"{type} row {r} element {i}: {v} vs {deq[i]}");
            }
        }
    }

    public static IEnumerable<object[]> FloatTypeIsas() => IntDotTests.FloatTypeIsas();

    [Fact]
    public void FloatGemmTile_MatchesScalarReference()
    {
        if (!FloatGemm.IsSupported) return;
        var rng = new Random(5);
        // Token counts around the 64-token block and 16-token tail; k across the k-block (128); ragged rows.
        foreach (var (rows, n, k) in new[] { (1, 1, 3), (6, 64, 128), (7, 70, 300), (23, 17, 129), (12, 130, 64) })
        {
            int padded = (rows + FloatGemm.R - 1) / FloatGemm.R * FloatGemm.R;
            int ws = FloatGemm.RowStride(k);
            var w = new float[padded * ws];
            var wDense = new float[rows * k];
            for (int i = 0; i < rows * k; i++) w[i / k * ws + i % k] = wDense[i] = (float)(rng.NextDouble() * 2 - 1);
            var x = new float[n * k];
            for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
            long ys = rows + 5;
            var y = new float[n * ys];
            var expected = new float[n * ys];
            var xp = new float[FloatGemm.PackedLength(n, k)];
            var acc = new float[padded * ((n + 15) / 16 * 16)];
            fixed (float* pw = w, pd = wDense, px = x, py = y, pe = expected, pxp = xp, pa = acc)
            {
                FloatGemm.PackX(px, n, k, pxp);
                FloatGemm.Tile(pw, rows, padded, pxp, n, k, py, ys, pa);
                Gemm.BlockScalar(pd, rows, px, n, k, pe, ys);
            }
            for (int t = 0; t < n; t++)
                for (int r = 0; r < ys; r++)
                {
                    float got = y[t * ys + r], want = r < rows ? expected[t * ys + r] : 0;
                    Assert.True(Math.Abs(got - want) <= 1e-4f * (1 + Math.Abs(want)), $"rows={rows} n={n} k={k} t={t} r={r}: {got} vs {want}");
                }
        }
    }

    [Theory]
    [MemberData(nameof(FloatTypeIsas))]
    public void FloatTypes_MatVecAndBatch_MatchDequantizedProduct(GgmlType type, string isaName)
    {
        var isa = Enum.Parse<FloatDot.Isa>(isaName);
        foreach (var (rows, n, cols) in new[] { (5, 1, 67), (17, 1, 256), (7, 3, 129), (18, 9, 64) })
        {
            long rowBytes = GgmlTypes.RowBytes(type, cols);
            var w = new byte[rowBytes * rows];
            var wd = new float[rows][];
            for (int r = 0; r < rows; r++)
            {
                var row = QuantizeRow(type, Gaussian(cols, r + 31, 0.2f));
                row.CopyTo(w, r * rowBytes);
                wd[r] = DequantizeRow(type, row, cols);
            }
            var x = Gaussian(n * cols, 3);
            var y = new float[n * rows];
            fixed (byte* pw = w) MatMul.MatMulBatch(type, pw, rowBytes, rows, cols, x, y, n, IntDot.Best, isa);
            for (int t = 0; t < n; t++)
                for (int r = 0; r < rows; r++)
                {
                    var (exact, absSum) = ExactDot(wd[r], x.AsSpan(t * cols, cols));
                    Assert.True(Math.Abs(y[t * rows + r] - exact) <= 1e-5 * absSum + 1e-30, $"{type} {isa} rows={rows} n={n} t={t} r={r}: {y[t * rows + r]} vs {exact}");
                }
        }
    }

    /// <summary>
    /// Batch invariance at the kernel level (the server's decode): a row-wise product of several tokens gives every
    /// token exactly its one-token product, bit for bit, on every path: the multi-token kernels (q8_0, q4_0 and the
    /// float types, four tokens at a time, then the rest) and the per-token fallback of the other types.
    /// </summary>
    [Theory]
    [MemberData(nameof(IntTypeIsas))]
    public void RowWiseBatch_EqualsOneTokenProducts_Int(GgmlType type, string isaName)
    {
        var isa = Enum.Parse<IntDot.Isa>(isaName);
        // Odd block counts (the unpaired last block), token counts around the groups of four and eight, and rows long
        // enough for the eight-token kernels' column tiles (32 block pairs), a partial last tile among them.
        foreach (var (rows, n, blocks) in new[] { (3, 2, 3), (5, 4, 4), (9, 5, 5), (17, 8, 2), (6, 9, 7), (3, 8, 141), (2, 9, 128), (5, 16, 65) })
        {
            var (w, rowBytes, cols) = Matrix(type, rows, blocks, 31 * rows + n);
            var x = Gaussian(n * cols, rows + 100 * n);
            AssertRowWiseExact(type, w, rowBytes, rows, cols, x, n, isa, FloatDot.Best, $"{type} {isa}");
        }
    }

    [Theory]
    [MemberData(nameof(FloatTypeIsas))]
    public void RowWiseBatch_EqualsOneTokenProducts_Float(GgmlType type, string isaName)
    {
        var isa = Enum.Parse<FloatDot.Isa>(isaName);
        foreach (var (rows, n, cols) in new[] { (5, 2, 67), (7, 4, 256), (9, 5, 129), (18, 9, 1040) })
        {
            long rowBytes = GgmlTypes.RowBytes(type, cols);
            var w = new byte[rowBytes * rows];
            for (int r = 0; r < rows; r++) QuantizeRow(type, Gaussian(cols, r + 31, 0.2f)).CopyTo(w, r * rowBytes);
            var x = Gaussian(n * cols, 3 + n);
            AssertRowWiseExact(type, w, rowBytes, rows, cols, x, n, IntDot.Best, isa, $"{type} {isa}");
        }
    }

    private static void AssertRowWiseExact(GgmlType type, byte[] w, long rowBytes, int rows, int cols, float[] x, int n,
        IntDot.Isa isa, FloatDot.Isa fisa, string what)
    {
        var batch = new float[n * rows];
        fixed (byte* pw = w)
        {
            using (MatMul.RowWiseScope(true)) MatMul.MatMulBatch(type, pw, rowBytes, rows, cols, x, batch, n, isa, fisa);
            var one = new float[rows];
            for (int t = 0; t < n; t++)
            {
                MatMul.MatVec(type, pw, rowBytes, rows, cols, x.AsSpan(t * cols, cols), one, isa, fisa);
                for (int r = 0; r < rows; r++)
                    Assert.True(BitConverter.SingleToInt32Bits(one[r]) == BitConverter.SingleToInt32Bits(batch[t * rows + r]),
                        $"{what} rows={rows} n={n} cols={cols}: token {t} row {r} is {batch[t * rows + r]} in the batch, {one[r]} alone");
            }
        }
    }
}
