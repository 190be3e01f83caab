using FitLM.Tensors;
using Xunit;
using static FitLM.Tests.Kernels.KernelTestData;

namespace FitLM.Tests.Kernels;

/// <summary>Quantize.Row then Dequantize.Row: the error must stay within what each format guarantees.</summary>
public class RoundTripTests
{
    private const int Rows = 5;
    private const int BlocksPerRow = 7;

    [Fact]
    public void F32_IsExact()
    {
        foreach (var x in WeightRows(GgmlType.F32, Rows, BlocksPerRow, 1))
            Assert.Equal(x, DequantizeRow(GgmlType.F32, QuantizeRow(GgmlType.F32, x), x.Length));
    }

    [Fact]
    public void F16_RoundsToNearestHalf()
    {
        foreach (var x in WeightRows(GgmlType.F16, Rows, BlocksPerRow, 2))
        {
            var y = DequantizeRow(GgmlType.F16, QuantizeRow(GgmlType.F16, x), x.Length);
            for (int i = 0; i < x.Length; i++) Assert.Equal((float)(Half)x[i], y[i]);
        }
    }

    [Fact]
    public void BF16_RoundsToNearestEven()
    {
        var x = WeightRows(GgmlType.BF16, Rows, BlocksPerRow, 3).SelectMany(r => r).ToList();
        // Exact ties: a mantissa whose dropped 16 bits are exactly 0x8000 rounds to the even neighbour.
        x.Add(BitConverter.UInt32BitsToSingle(0x3F808000)); // tie, lower (0x3F80) is even -> 0x3F80
        x.Add(BitConverter.UInt32BitsToSingle(0x3F818000)); // tie, lower (0x3F81) is odd  -> 0x3F82
        x.Add(BitConverter.UInt32BitsToSingle(0x3F808001)); // just above the tie        -> 0x3F81
        x.Add(float.PositiveInfinity);
        x.Add(-0f);
        var arr = x.ToArray();
        var bytes = QuantizeRow(GgmlType.BF16, arr);
        var y = DequantizeRow(GgmlType.BF16, bytes, arr.Length);
        for (int i = 0; i < arr.Length; i++)
        {
            // Independent rounding: pick the nearer of the two bf16 neighbours in double, ties to even.
            uint u = BitConverter.SingleToUInt32Bits(arr[i]);
            uint lower = u & 0xFFFF0000u;
            uint upper = lower + 0x10000u;
            double dl = Math.Abs((double)arr[i] - BitConverter.UInt32BitsToSingle(lower));
            double du = float.IsInfinity(arr[i]) ? double.PositiveInfinity : Math.Abs((double)arr[i] - BitConverter.UInt32BitsToSingle(upper));
            uint expected = dl < du ? lower : du < dl ? upper : ((lower >> 16) & 1) == 0 ? lower : upper;
            Assert.Equal(expected, BitConverter.SingleToUInt32Bits(y[i]));
        }
        Assert.Equal(0x3F80, BitConverter.ToUInt16(bytes, 2 * (arr.Length - 5)));
        Assert.Equal(0x3F82, BitConverter.ToUInt16(bytes, 2 * (arr.Length - 4)));
        Assert.Equal(0x3F81, BitConverter.ToUInt16(bytes, 2 * (arr.Length - 3)));
        Assert.True(float.IsNaN(DequantizeRow(GgmlType.BF16, QuantizeRow(GgmlType.BF16, new[] { float.NaN }), 1)[0]));
    }

    /// <summary>Largest error of rounding <paramref name="v"/> to fp16: half an ulp, 2^-25 for subnormals.</summary>
    private static double HalfError(double v) => Math.Max(Math.Abs(v) / 2048, Math.Pow(2, -25));

    /// <summary>
    /// Per-element bound for the 32-element block formats, from the format's arithmetic:
    /// half a step of rounding (a full step where ggml clamps the top code), plus the fp16 rounding of d
    /// (relative 2^-11) times the largest code, plus the fp16 rounding of m.
    /// </summary>
    [Theory]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.Q8_1)]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q4_1)]
    [InlineData(GgmlType.Q5_0)]
    [InlineData(GgmlType.Q5_1)]
    [InlineData(GgmlType.Q8_K)]
    public void BlockFormats_ErrorWithinStep(GgmlType type)
    {
        int bs = GgmlTypes.BlockSize(type);
        foreach (var x in WeightRows(type, Rows, BlocksPerRow, 10 + (int)type))
        {
            var y = DequantizeRow(type, QuantizeRow(type, x), x.Length);
            for (int b = 0; b < x.Length / bs; b++)
            {
                var xb = x.AsSpan(b * bs, bs);
                float amax = 0, min = float.MaxValue, max = float.MinValue;
                foreach (float v in xb) { amax = Math.Max(amax, Math.Abs(v)); min = Math.Min(min, v); max = Math.Max(max, v); }
                float range = max - min;
                double bound = type switch
                {
                    GgmlType.Q8_0 or GgmlType.Q8_1 => 0.5 * amax / 127 + 127 * HalfError(amax / 127),
                    GgmlType.Q8_K => 0.5 * amax / 127 * 1.0001, // float32 scale
                    GgmlType.Q4_0 => amax / 8 + 8 * HalfError(amax / 8),
                    GgmlType.Q5_0 => amax / 16 + 16 * HalfError(amax / 16),
                    GgmlType.Q4_1 => 0.5 * range / 15 + 15 * HalfError(range / 15) + HalfError(min),
                    GgmlType.Q5_1 => 0.5 * range / 31 + 31 * HalfError(range / 31) + HalfError(min),
                    _ => throw new InvalidOperationException(),
                } * 1.001 + 1e-30;
                for (int j = 0; j < bs; j++)
                {
                    double err = Math.Abs((double)xb[j] - y[b * bs + j]);
                    Assert.True(err <= bound, $"{type} block {b} element {j}: x={xb[j]} y={y[b * bs + j]} err={err} bound={bound}");
                }
            }
        }
    }

    /// <summary>
    /// Relative RMS error (RMS of the error over RMS of the data) on Gaussian weight-like rows, worst row of
    /// five. The bounds are 15-25% above what ggml's reference quantizers achieve on this data (measured:
    /// q2_K 0.350, q3_K 0.180, q4_K 0.080, q5_K 0.040, q6_K 0.021, q8_K 0.011, q4_0 0.108, q4_1 0.095,
    /// q5_0 0.058, q5_1 0.046, q8_0 0.0076); a layout error gives errors near or above 1.
    /// </summary>
    [Theory]
    [InlineData(GgmlType.Q2_K, 0.40)]
    [InlineData(GgmlType.Q3_K, 0.21)]
    [InlineData(GgmlType.Q4_K, 0.095)]
    [InlineData(GgmlType.Q5_K, 0.048)]
    [InlineData(GgmlType.Q6_K, 0.025)]
    [InlineData(GgmlType.Q8_K, 0.014)] // one float32 scale per 256 values: outliers widen the step
    [InlineData(GgmlType.Q4_0, 0.125)]
    [InlineData(GgmlType.Q4_1, 0.11)]
    [InlineData(GgmlType.Q5_0, 0.068)] // rows scaled by 1e-3 get subnormal fp16 scales
    [InlineData(GgmlType.Q5_1, 0.055)]
    [InlineData(GgmlType.Q8_0, 0.009)]
    [InlineData(GgmlType.Q8_1, 0.009)]
    public void RelativeRmsError_WithinFormatBound(GgmlType type, double bound)
    {
        double worst = 0;
        foreach (var x in WeightRows(type, Rows, BlocksPerRow, 20 + (int)type))
        {
            var y = DequantizeRow(type, QuantizeRow(type, x), x.Length);
            worst = Math.Max(worst, RmsDiff(x, y) / Rms(x));
        }
        Assert.True(worst < bound, $"{type}: relative RMS error {worst:F5} >= {bound}");
    }

    [Theory]
    [MemberData(nameof(BlockTypeData), MemberType = typeof(KernelTestData))]
    public void ZeroRow_StaysZero(GgmlType type)
    {
        var x = new float[GgmlTypes.BlockSize(type) * 3];
        var y = DequantizeRow(type, QuantizeRow(type, x), x.Length);
        Assert.All(y, v => Assert.Equal(0f, v));
    }

    [Theory]
    [MemberData(nameof(BlockTypeData), MemberType = typeof(KernelTestData))]
    public void AllPositiveAndConstantBlocks_RoundTrip(GgmlType type)
    {
        int bs = GgmlTypes.BlockSize(type);
        var rng = new Random(5);
        var x = new float[bs * 3];
        for (int i = 0; i < bs; i++) x[i] = 1f + (float)rng.NextDouble();   // all positive, offset from zero
        for (int i = bs; i < 2 * bs; i++) x[i] = -0.75f;                     // constant negative
        for (int i = 2 * bs; i < 3 * bs; i++) x[i] = -3f - (float)rng.NextDouble(); // all negative
        var y = DequantizeRow(type, QuantizeRow(type, x), x.Length);
        Assert.All(y, v => Assert.True(float.IsFinite(v)));
        double rel = RmsDiff(x, y) / Rms(x);
        double bound = type switch { GgmlType.Q2_K => 0.35, GgmlType.Q3_K => 0.2, _ => 0.08 };
        Assert.True(rel < bound, $"{type}: relative RMS error {rel:F4} on offset blocks");
    }

    [Theory]
    [MemberData(nameof(AllTypeData), MemberType = typeof(KernelTestData))]
    public void Quantize_IsDeterministicAndFillsEveryByte(GgmlType type)
    {
        var x = WeightRows(type, 1, 3, 99)[0];
        var a = new byte[GgmlTypes.RowBytes(type, x.Length)];
        var b = new byte[a.Length];
        Array.Fill(a, (byte)0xAA);
        Array.Fill(b, (byte)0x55);
        Quantize.Row(type, x, a);
        Quantize.Row(type, x, b);
        Assert.Equal(a, b);
    }

    [Theory]
    [MemberData(nameof(AllTypeData), MemberType = typeof(KernelTestData))]
    public void WrongSizes_Throw(GgmlType type)
    {
        int bs = GgmlTypes.BlockSize(type);
        int n = bs * 2;
        long bytes = GgmlTypes.RowBytes(type, n);
        Assert.Throws<FitLMException>(() => Dequantize.Row(type, new byte[bytes + 1], new float[n]));
        Assert.Throws<FitLMException>(() => Dequantize.Row(type, new byte[bytes - 1], new float[n]));
        Assert.Throws<FitLMException>(() => Quantize.Row(type, new float[n], new byte[bytes + 1]));
        Assert.Throws<FitLMException>(() => QuantDot.Dot(type, new byte[bytes - 1], new float[n]));
        if (bs > 1)
        {
            Assert.Throws<FitLMException>(() => Dequantize.Row(type, new byte[bytes], new float[n + 1]));
            Assert.Throws<FitLMException>(() => QuantDot.Dot(type, new byte[bytes], new float[n - 1]));
        }
    }

    [Fact]
    public void UnknownType_Throws()
    {
        var bad = (GgmlType)42;
        Assert.Throws<FitLMException>(() => Dequantize.Row(bad, new byte[4], new float[1]));
        Assert.Throws<FitLMException>(() => Quantize.Row(bad, new float[1], new byte[4]));
        Assert.Throws<FitLMException>(() => QuantDot.Dot(bad, new byte[4], new float[1]));
    }
}
