using System.Runtime.InteropServices;
using FitLM.Tensors;
using Xunit;
using static FitLM.Tests.Kernels.KernelTestData;

namespace FitLM.Tests.Kernels;

/// <summary>
/// Activation quantization (vector = scalar definition, bit for bit; equal to ggml's encoders) and the integer
/// dot kernels: every reachable path against the scalar reference (exact integer block sums, so only float
/// summation order differs), the reference against the exact product of the dequantized operands, and both
/// against the float-activation <see cref="QuantDot"/> within the error of quantizing the activations.
/// </summary>
public unsafe class IntDotTests
{
    public static readonly GgmlType[] IntTypes =
    {
        GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q5_0, GgmlType.Q4_1, GgmlType.Q5_1,
        GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K,
    };

    // Theory arguments are public; the kernels' ISA enums are internal, so the data carries their names.
    public static IEnumerable<object[]> IntTypeIsas()
    {
        foreach (var t in IntTypes)
            foreach (var isa in Enum.GetValues<IntDot.Isa>())
                if (IntDot.IsSupported(isa)) yield return new object[] { t, isa.ToString() };
    }

    public static IEnumerable<object[]> IntTypeData() => IntTypes.Select(t => new object[] { t });

    // ---------------------------------------------------------------- activation quantization

    /// <summary>Activations with awkward values: exact ties at .5 after scaling, zeros, repeated maxima of both signs.</summary>
    private static float[] NastyActivations(int n, int seed)
    {
        var x = Gaussian(n, seed, 3f);
        var rng = new Random(seed);
        for (int b = 0; b < n / 32; b++)
        {
            switch (rng.Next(8))
            {
                case 0: Array.Clear(x, 32 * b, 32); break;                                  // all-zero block
                case 1: for (int j = 0; j < 32; j++) x[32 * b + j] = (j % 7 - 3) * 0.5f; break; // ties
                case 2: x[32 * b + 3] = 10; x[32 * b + 9] = -10; break;                      // max of both signs
                case 3: x[32 * b + 5] = -7; x[32 * b + 30] = 7; break;
                case 4: // exact .5 ties after scaling by 127/amax = 1 (q8_0) or -127/max = 1 (q8_K, max = -127)
                case 5:
                    for (int j = 0; j < 31; j++) x[32 * b + j] = j - 15.5f;
                    x[32 * b + 31] = rng.Next(2) == 0 ? 127 : -127;
                    break;
            }
        }
        return x;
    }

    [Theory]
    [InlineData(nameof(ActFormat.Q8_0))]
    [InlineData(nameof(ActFormat.Q8_1))]
    [InlineData(nameof(ActFormat.Q8_K))]
    public void VectorQuantizer_MatchesScalarBitForBit(string formatName)
    {
        var format = Enum.Parse<ActFormat>(formatName);
        if (!ActivationQuant.VectorSupported) return;
        foreach (int cols in new[] { 256, 512, 2048 })
        {
            const int n = 3;
            var x = NastyActivations(cols * n, cols);
            using var v = new QuantizedActivations();
            using var s = new QuantizedActivations();
            fixed (float* px = x)
            {
                ActivationQuant.Quantize(format, px, cols, n, v, vector: true);
                ActivationQuant.Quantize(format, px, cols, n, s, vector: false);
            }
            int bytes = (int)GgmlTypes.RowBytes(BlockType(format), cols);
            for (int t = 0; t < n; t++)
            {
                var bv = new byte[bytes];
                var bs = new byte[bytes];
                ActivationQuant.ToGgmlBlocks(v, t, bv);
                ActivationQuant.ToGgmlBlocks(s, t, bs);
                Assert.Equal(bs, bv);
                if (format != ActFormat.Q8_K)
                    for (int b = 0; b < cols / 32; b++)
                    {
                        Assert.Equal(s.Row(t).Sum[b], v.Row(t).Sum[b]);
                        Assert.Equal(s.Row(t).S[b], v.Row(t).S[b]);
                    }
            }
        }
    }

    private static GgmlType BlockType(ActFormat f) => f switch
    {
        ActFormat.Q8_0 => GgmlType.Q8_0,
        ActFormat.Q8_1 => GgmlType.Q8_1,
        _ => GgmlType.Q8_K,
    };

    [Fact]
    public void Q8_K_EqualsGgmlReferenceEncoder()
    {
        var x = NastyActivations(1024, 5);
        using var a = new QuantizedActivations();
        fixed (float* px = x) ActivationQuant.Quantize(ActFormat.Q8_K, px, 1024, 1, a);
        var mine = new byte[GgmlTypes.RowBytes(GgmlType.Q8_K, 1024)];
        ActivationQuant.ToGgmlBlocks(a, 0, mine);
        Assert.Equal(QuantizeRow(GgmlType.Q8_K, x), mine);
    }

    [Theory]
    [InlineData(nameof(ActFormat.Q8_0))]
    [InlineData(nameof(ActFormat.Q8_1))]
    public void Q8_0_DiffersFromReferenceOnlyAtRoundingTies(string formatName)
    {
        var format = Enum.Parse<ActFormat>(formatName);
        // llama.cpp's x86 quantizer multiplies by 127/amax and rounds ties to even; quantize_row_q8_0_ref
        // multiplies by 1/d and rounds ties away from zero. Same scale, quants within 1 of each other.
        var x = NastyActivations(2048, 9);
        using var a = new QuantizedActivations();
        fixed (float* px = x) ActivationQuant.Quantize(format, px, 2048, 1, a);
        var mine = new byte[GgmlTypes.RowBytes(BlockType(format), 2048)];
        ActivationQuant.ToGgmlBlocks(a, 0, mine);
        var reference = QuantizeRow(BlockType(format), x);
        int bb = format == ActFormat.Q8_0 ? 34 : 36, q0 = format == ActFormat.Q8_0 ? 2 : 4;
        int differing = 0;
        for (int b = 0; b < 64; b++)
        {
            Assert.Equal(reference[bb * b], mine[bb * b]);
            Assert.Equal(reference[bb * b + 1], mine[bb * b + 1]);
            for (int j = 0; j < 32; j++)
            {
                int d = (sbyte)mine[bb * b + q0 + j] - (sbyte)reference[bb * b + q0 + j];
                Assert.InRange(d, -1, 1);
                if (d != 0) differing++;
            }
        }
        // Ties are rare in real activations: on Gaussian data the encoders agree almost everywhere.
        var g = Gaussian(2048, 10);
        fixed (float* pg = g) ActivationQuant.Quantize(format, pg, 2048, 1, a);
        ActivationQuant.ToGgmlBlocks(a, 0, mine);
        reference = QuantizeRow(BlockType(format), g);
        differing = 0;
        for (int b = 0; b < 64; b++)
            for (int j = 0; j < 32; j++)
                if (mine[bb * b + q0 + j] != reference[bb * b + q0 + j]) differing++;
        Assert.True(differing <= 20, $"{differing} of 2048 quants differ on Gaussian data");
    }

    [Fact]
    public void QuantizingAllocatesNothingOnceSized()
    {
        var x = Gaussian(2048, 1);
        using var a = new QuantizedActivations();
        fixed (float* px = x)
        {
            ActivationQuant.Quantize(ActFormat.Q8_0, px, 2048, 1, a);
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 10; i++)
            {
                ActivationQuant.Quantize(ActFormat.Q8_0, px, 2048, 1, a);
                ActivationQuant.Quantize(ActFormat.Q8_K, px, 2048, 1, a);
            }
            Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
        }
    }

    // ---------------------------------------------------------------- dot kernels

    /// <summary>Dequantized activations d·q, in double, for the exact reference.</summary>
    private static double[] DequantizeAct(ActRow r, ActFormat f, int cols)
    {
        var y = new double[cols];
        int bs = f == ActFormat.Q8_K ? 256 : 32;
        for (int i = 0; i < cols; i++) y[i] = (double)r.D[i / bs] * r.Q[i];
        return y;
    }

    /// <summary>
    /// q4_1/q5_1 against q8_1: ggml takes the min term m·(da·Σa) as m·s with s = fp16(d·Σq) stored in the
    /// activation block, not the exact sum: the definition's value minus the exact one.
    /// </summary>
    private static double Q8_1Correction(GgmlType type, byte[] row, ActRow a, double[] ad, int cols)
    {
        if (ActivationQuant.FormatFor(type) != ActFormat.Q8_1) return 0;
        int bb = GgmlTypes.BlockBytes(type);
        double c = 0;
        for (int b = 0; b < cols / 32; b++)
        {
            double m = (float)BitConverter.UInt16BitsToHalf(BitConverter.ToUInt16(row, bb * b + 2));
            double exactSum = 0;
            for (int j = 0; j < 32; j++) exactSum += ad[32 * b + j];
            c += m * (a.S[b] - exactSum);
        }
        return c;
    }

    private static IEnumerable<(string what, byte[] row, float[] x)> Cases(GgmlType type)
    {
        int bs = Math.Max(32, GgmlTypes.BlockSize(type));
        var rows = WeightRows(type, 3, 7, 11 + (int)type);
        for (int r = 0; r < rows.Length; r++)
            yield return ($"quantized row {r}", QuantizeRow(type, rows[r]), NastyActivations(rows[r].Length, 100 + r));
        for (int seed = 0; seed < 4; seed++)
        {
            int blocks = 1 + 2 * seed;
            yield return ($"random bytes {seed}", RandomBlocks(type, blocks, 300 + seed), Gaussian(blocks * bs, 400 + seed, 2f));
        }
    }

    [Theory]
    [MemberData(nameof(IntTypeIsas))]
    public void Kernel_MatchesScalarReference_AndExactDefinition(GgmlType type, string isaName)
    {
        var isa = Enum.Parse<IntDot.Isa>(isaName);
        var format = ActivationQuant.FormatFor(type);
        foreach (var (what, row, x) in Cases(type))
        {
            int cols = x.Length;
            using var act = new QuantizedActivations();
            fixed (float* px = x) ActivationQuant.Quantize(type, px, cols, 1, act);
            var a = act.Row(0);
            Assert.Equal(type, act.PreparedFor);
            var wd = DequantizeRow(type, row, cols);
            var ad = DequantizeAct(a, format, cols);
            double exact = 0, absSum = 0;
            for (int i = 0; i < cols; i++) { exact += wd[i] * ad[i]; absSum += Math.Abs(wd[i] * ad[i]); }
            exact += Q8_1Correction(type, row, a, ad, cols);
            float got, reference;
            fixed (byte* pw = row)
            {
                got = IntDot.Dot(type, pw, a, cols, isa);
                reference = IntDot.Dot(type, pw, a, cols, IntDot.Isa.Scalar);
            }
            // The weights' dequantized floats are themselves float products (d·sc·q), so allow float rounding.
            double tol = 2e-6 * absSum + 1e-30;
            Assert.True(Math.Abs(reference - exact) <= tol, $"{type} {what}: reference {reference} vs exact {exact} (tol {tol})");
            Assert.True(Math.Abs(got - reference) <= tol, $"{type} {isa} {what}: {got} vs reference {reference} (tol {tol})");
        }
    }

    [Theory]
    [MemberData(nameof(IntTypeData))]
    public void Kernel_AgreesWithFloatActivations_WithinActivationQuantizationError(GgmlType type)
    {
        var format = ActivationQuant.FormatFor(type);
        foreach (var (what, row, x) in Cases(type))
        {
            int cols = x.Length;
            using var act = new QuantizedActivations();
            fixed (float* px = x) ActivationQuant.Quantize(type, px, cols, 1, act);
            var a = act.Row(0);
            var wd = DequantizeRow(type, row, cols);
            int bs = format == ActFormat.Q8_K ? 256 : 32;
            // |x - d·q| ≤ d/2 per element (q8_K: d of the block; at the clamp 127 the error is still ≤ d/2).
            double bound = 0, absSum = 0;
            for (int i = 0; i < cols; i++) { bound += Math.Abs(wd[i] * a.D[i / bs]) * 0.5; absSum += Math.Abs(wd[i] * x[i]); }
            // q8_1's s is rounded to fp16: up to 2^-11 relative of |m·s| per block on top.
            if (format == ActFormat.Q8_1)
                for (int b = 0; b < cols / 32; b++)
                    bound += Math.Abs(a.S[b] * (float)BitConverter.UInt16BitsToHalf(BitConverter.ToUInt16(row, GgmlTypes.BlockBytes(type) * b + 2))) / 1024;
            float floatDot = QuantDot.Dot(type, row, x);
            float got;
            fixed (byte* pw = row) got = IntDot.Dot(type, pw, a, cols, IntDot.Best);
            double tol = bound * 1.001 + 1e-4 * absSum + 1e-30;
            Assert.True(Math.Abs(got - floatDot) <= tol, $"{type} {what}: int {got} vs float {floatDot} (tol {tol})");
        }
    }

    [Theory]
    [MemberData(nameof(IntTypeData))]
    public void OneHotActivations_PickOutWeights(GgmlType type)
    {
        // A single nonzero activation of 127 units selects one weight: catches element/quant mix-ups that
        // random sums could hide.
        var format = ActivationQuant.FormatFor(type);
        var v = WeightRows(type, 1, 2, 31)[0];
        var row = QuantizeRow(type, v);
        var wd = DequantizeRow(type, row, v.Length);
        var x = new float[v.Length];
        using var act = new QuantizedActivations();
        for (int i = 0; i < v.Length; i += 1 + i % 7)
        {
            Array.Clear(x);
            x[i] = 1;
            fixed (float* px = x) ActivationQuant.Quantize(type, px, x.Length, 1, act);
            var a = act.Row(0);
            float scale = a.D[i / (format == ActFormat.Q8_K ? 256 : 32)] * a.Q[i]; // ≈ 1
            double expected = wd[i] * scale;
            if (format == ActFormat.Q8_1)
            {
                // The min term uses q8_1's fp16 s instead of d·q.
                double m = (float)BitConverter.UInt16BitsToHalf(BitConverter.ToUInt16(row, GgmlTypes.BlockBytes(type) * (i / 32) + 2));
                expected += m * (a.S[i / 32] - scale);
            }
            foreach (var isa in Enum.GetValues<IntDot.Isa>().Where(IntDot.IsSupported))
            {
                float got;
                fixed (byte* pw = row) got = IntDot.Dot(type, pw, a, x.Length, isa);
                Assert.True(Math.Abs(got - expected) <= 1e-5 * Math.Abs(wd[i]) + 1e-12, $"{type} {isa} element {i}: {got} vs {expected}");
            }
        }
    }

    // ---------------------------------------------------------------- float-activation kernels

    public static IEnumerable<object[]> FloatTypeIsas()
    {
        foreach (var t in new[] { GgmlType.F32, GgmlType.F16, GgmlType.BF16 })
            foreach (var isa in Enum.GetValues<FloatDot.Isa>())
                if (FloatDot.IsSupported(isa)) yield return new object[] { t, isa.ToString() };
    }

    [Theory]
    [MemberData(nameof(FloatTypeIsas))]
    public void FloatKernels_MatchScalar_AnyLength(GgmlType type, string isaName)
    {
        var isa = Enum.Parse<FloatDot.Isa>(isaName);
        foreach (int n in new[] { 1, 7, 8, 15, 16, 17, 63, 64, 65, 255, 1000 })
        {
            var w = QuantizeRow(type, Gaussian(n, n, 0.1f));
            var x = Gaussian(n, n + 1);
            var wd = DequantizeRow(type, w, n);
            var (exact, absSum) = ExactDot(wd, x);
            var conv = new float[n];
            float got;
            fixed (byte* pw = w)
            fixed (float* px = x, pc = conv)
            {
                got = FloatDot.Dot(type, pw, px, n, isa);
                FloatDot.ToFloat(type, pw, pc, n, isa);
            }
            Assert.True(Math.Abs(got - exact) <= 1e-5 * absSum + 1e-30, $"{type} {isa} n={n}: {got} vs {exact}");
            Assert.Equal(wd, conv); // conversion is exact
        }
    }

    [Fact]
    public void F16Conversion_IsExactForEveryFiniteHalf()
    {
        if (!FloatDot.IsSupported(FloatDot.Isa.Vector256)) return;
        var h = new ushort[65536];
        for (int i = 0; i < h.Length; i++) h[i] = (ushort)i;
        foreach (var isa in Enum.GetValues<FloatDot.Isa>().Where(FloatDot.IsSupported))
        {
            var f = new float[h.Length];
            fixed (ushort* ph = h)
            fixed (float* pf = f)
                FloatDot.ToFloat(GgmlType.F16, (byte*)ph, pf, h.Length, isa);
            for (int i = 0; i < h.Length; i++)
            {
                if ((i & 0x7C00) == 0x7C00) continue; // inf/NaN: weights never hold them
                Assert.Equal(BitConverter.SingleToUInt32Bits((float)BitConverter.UInt16BitsToHalf((ushort)i)), BitConverter.SingleToUInt32Bits(f[i]));
            }
        }
    }
}
