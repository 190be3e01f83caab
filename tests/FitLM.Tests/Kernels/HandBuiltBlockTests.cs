using FitLM.Tensors;
using Xunit;
using static FitLM.Tests.Kernels.KernelTestData;

namespace FitLM.Tests.Kernels;

/// <summary>
/// Blocks assembled byte by byte, with expected values worked out by hand from ggml's layouts
/// (ggml-common.h) and formulas (dequantize_row_* in ggml-quants.c). Round trips cannot catch a layout that
/// is self-consistent but differs from ggml; these can. Offsets in comments are from the block start.
/// </summary>
public class HandBuiltBlockTests
{
    private static float[] Deq(GgmlType type, byte[] block)
    {
        var y = new float[GgmlTypes.BlockSize(type)];
        Dequantize.Row(type, block, y);
        return y;
    }

    private static void AssertDot(GgmlType type, byte[] block, float[] y)
    {
        // The dot product with a one-hot vector picks out one element; checks QuantDot's layout too.
        foreach (int i in new[] { 0, 1, y.Length / 2 + 3, y.Length - 1 })
        {
            var x = new float[y.Length];
            x[i] = 1;
            Assert.Equal(y[i], QuantDot.Dot(type, block, x), 5);
            Assert.Equal(y[i], QuantDot.Reference(type, block, x), 5);
        }
    }

    [Fact]
    public void HalfToSingle_MatchesSystemHalf_ForAllBitPatterns()
    {
        for (int h = 0; h < 65536; h++)
        {
            float expected = (float)BitConverter.UInt16BitsToHalf((ushort)h);
            float got = Dequantize.HalfToSingle((ushort)h);
            if (float.IsNaN(expected)) Assert.True(float.IsNaN(got), $"0x{h:X4}");
            else Assert.True(BitConverter.SingleToUInt32Bits(expected) == BitConverter.SingleToUInt32Bits(got), $"0x{h:X4}: {got} vs {expected}");
        }
    }

    [Fact]
    public void F16_And_BF16()
    {
        Assert.Equal(new[] { 1f, -2f, 0.5f }, Deq3(GgmlType.F16, new byte[] { 0x00, 0x3C, 0x00, 0xC0, 0x00, 0x38 }));
        // bf16 0x3F80 = 1.0, 0xC040 = -3.0, 0x4049 = 3.140625
        Assert.Equal(new[] { 1f, -3f, 3.140625f }, Deq3(GgmlType.BF16, new byte[] { 0x80, 0x3F, 0x40, 0xC0, 0x49, 0x40 }));
        static float[] Deq3(GgmlType t, byte[] b) { var y = new float[3]; Dequantize.Row(t, b, y); return y; }
    }

    [Fact]
    public void Q4_0()
    {
        var b = new byte[18];
        PutHalf(b, 0, 0.5f);       // d
        b[2 + 0] = 0x1F;           // qs[0]: element 0 = lo 15, element 16 = hi 1
        b[2 + 5] = 0x80;           // qs[5]: element 5 = lo 0, element 21 = hi 8
        var y = Deq(GgmlType.Q4_0, b);
        Assert.Equal((15 - 8) * 0.5f, y[0]);
        Assert.Equal((1 - 8) * 0.5f, y[16]);
        Assert.Equal((0 - 8) * 0.5f, y[5]);
        Assert.Equal(0f, y[21]);
        Assert.Equal(-4f, y[1]); // qs[1] = 0 -> -8 * 0.5
        AssertDot(GgmlType.Q4_0, b, y);
    }

    [Fact]
    public void Q4_1()
    {
        var b = new byte[20];
        PutHalf(b, 0, 2f);         // d
        PutHalf(b, 2, -1f);        // m
        b[4 + 3] = 0xA5;           // qs[3]: element 3 = 5, element 19 = 10
        var y = Deq(GgmlType.Q4_1, b);
        Assert.Equal(5 * 2f - 1f, y[3]);
        Assert.Equal(10 * 2f - 1f, y[19]);
        Assert.Equal(-1f, y[0]);
        AssertDot(GgmlType.Q4_1, b, y);
    }

    [Fact]
    public void Q5_0()
    {
        var b = new byte[22];
        PutHalf(b, 0, 1f);         // d
        b[2 + 0] = 0x04;           // qh bit 2  -> 5th bit of element 2
        b[2 + 2] = 0x10;           // qh bit 20 -> 5th bit of element 20
        b[6 + 2] = 0x3C;           // qs[2]: element 2 lo = 12, element 18 hi = 3
        b[6 + 4] = 0x70;           // qs[4]: element 4 lo = 0, element 20 hi = 7
        var y = Deq(GgmlType.Q5_0, b);
        Assert.Equal((12 + 16) - 16f, y[2]);
        Assert.Equal(3 - 16f, y[18]);
        Assert.Equal(0 - 16f, y[4]);
        Assert.Equal((7 + 16) - 16f, y[20]);
        AssertDot(GgmlType.Q5_0, b, y);
    }

    [Fact]
    public void Q5_1()
    {
        var b = new byte[24];
        PutHalf(b, 0, 0.25f);      // d
        PutHalf(b, 2, 10f);        // m
        b[4 + 3] = 0x80;           // qh bit 31 -> 5th bit of element 31
        b[8 + 15] = 0xF0;          // qs[15]: element 15 lo = 0, element 31 hi = 15
        var y = Deq(GgmlType.Q5_1, b);
        Assert.Equal(31 * 0.25f + 10f, y[31]);
        Assert.Equal(10f, y[15]);
        AssertDot(GgmlType.Q5_1, b, y);
    }

    [Fact]
    public void Q8_0_And_Q8_1_And_Q8_K()
    {
        var b = new byte[34];
        PutHalf(b, 0, 0.125f);
        b[2 + 31] = unchecked((byte)-100);
        b[2 + 0] = 7;
        var y = Deq(GgmlType.Q8_0, b);
        Assert.Equal(-12.5f, y[31]);
        Assert.Equal(0.875f, y[0]);
        AssertDot(GgmlType.Q8_0, b, y);

        var c = new byte[36];
        PutHalf(c, 0, -2f);        // d
        PutHalf(c, 2, 123f);       // s: not used for values
        c[4 + 0] = 7;
        c[4 + 31] = unchecked((byte)-128);
        y = Deq(GgmlType.Q8_1, c);
        Assert.Equal(-14f, y[0]);
        Assert.Equal(256f, y[31]);
        AssertDot(GgmlType.Q8_1, c, y);

        var k = new byte[292];
        BitConverter.TryWriteBytes(k.AsSpan(0, 4), 0.5f); // d is a float32 here
        k[4 + 0] = 3;
        k[4 + 255] = unchecked((byte)-128);
        y = Deq(GgmlType.Q8_K, k);
        Assert.Equal(1.5f, y[0]);
        Assert.Equal(-64f, y[255]);
        AssertDot(GgmlType.Q8_K, k, y);
    }

    [Fact]
    public void Q2_K()
    {
        // scales[16] @0, qs[64] @16, d @80, dmin @82. Element e = 128h + 32k + l: bits 2k of qs[32h + l];
        // sub-block e/16 with scale = low nibble, min = high nibble of scales[e/16].
        var b = new byte[84];
        PutHalf(b, 80, 1f);
        PutHalf(b, 82, 0.5f);
        b[12] = 0x37;          // sub-block 12: scale 7, min 3
        b[16 + 40] = 0x20;     // qs[40]: bits 4-5 = 2 -> element 128 + 64 + 8 = 200 (k = 2, l = 8)
        b[0] = 0xF1;           // sub-block 0: scale 1, min 15
        b[16 + 8] = 0x03;      // qs[8]: bits 0-1 = 3 -> element 8
        b[1] = 0x02;           // sub-block 1: scale 2, min 0
        b[16 + 24] = 0x01;     // qs[24]: bits 0-1 = 1 -> element 24
        var y = Deq(GgmlType.Q2_K, b);
        Assert.Equal(1f * 7 * 2 - 0.5f * 3, y[200]);
        Assert.Equal(-0.5f * 3, y[201]);         // same sub-block, q = 0
        Assert.Equal(0f, y[232]);                // qs[40] bits 6-7 = 0, sub-block 14 all zero
        Assert.Equal(1f * 1 * 3 - 0.5f * 15, y[8]);
        Assert.Equal(-0.5f * 15, y[9]);
        Assert.Equal(1f * 2 * 1, y[24]);
        Assert.Equal(0f, y[25]);
        AssertDot(GgmlType.Q2_K, b, y);
    }

    [Fact]
    public void Q3_K()
    {
        // hmask[32] @0, qs[64] @32, scales[12] @96, d @108.
        // Sub-block s scale (6 bits, minus 32): low 4 bits = low nibble of scales[s] (s < 8) or high nibble of
        // scales[s-8]; high 2 bits = bits 2*(s/4) of scales[8 + s%4].
        // Element e = 128h + 32k + l: low 2 bits = bits 2k of qs[32h + l]; high bit = bit (e/32) of hmask[l];
        // q = low - (high bit set ? 0 : 4).
        var b = new byte[110];
        PutHalf(b, 108, 0.5f);
        // Sub-block 13 = 45 (0b10_1101): low nibble 13 in the high nibble of scales[5], high bits 2 in bits 6-7 of scales[9].
        b[96 + 5] = 0xD0;
        b[96 + 9] = 0x80;
        // Element 210 = 128 + 64 + 18 (k = 2, l = 18): qs[50] bits 4-5 = 1, hmask[18] bit 6 set -> q = 1.
        b[32 + 50] = 0x10;
        b[18] = 0x40;
        // Element 211 (l = 19): qs[51] bits 4-5 = 3, hmask[19] bit 6 clear -> q = 3 - 4 = -1.
        b[32 + 51] = 0x30;
        // Sub-block 2 = 5: low nibble of scales[2]; bits 0-1 of scales[10] stay 0.
        b[96 + 2] = 0x05;
        // Element 40 = 32 + 8 (k = 1, l = 8): qs[8] bits 2-3 = 2, hmask[8] bit 1 set -> q = 2.
        b[32 + 8] = 0x08;
        b[8] = 0x02;
        var y = Deq(GgmlType.Q3_K, b);
        Assert.Equal(0.5f * (45 - 32) * 1, y[210]);
        Assert.Equal(0.5f * (45 - 32) * -1, y[211]);
        Assert.Equal(0.5f * (45 - 32) * -4, y[212]);  // nothing set: q = 0 - 4
        Assert.Equal(0.5f * (5 - 32) * 2, y[40]);
        Assert.Equal(0.5f * (5 - 32) * -4, y[41]);
        Assert.Equal(0.5f * (0 - 32) * -4, y[0]);    // sub-block 0 scale 0 -> -32
        AssertDot(GgmlType.Q3_K, b, y);
    }

    /// <summary>
    /// The q4_K/q5_K 12-byte scale packing used below (get_scale_min_k4): sub-block j &lt; 4: scale = scales[j] &amp; 63,
    /// min = scales[j+4] &amp; 63; j &gt;= 4: scale = (scales[j+4] &amp; 15) | (scales[j-4] &gt;&gt; 6) &lt;&lt; 4,
    /// min = (scales[j+4] &gt;&gt; 4) | (scales[j] &gt;&gt; 6) &lt;&lt; 4.
    /// Sub-block 6 = (scale 35, min 21), 7 = (1, 2), 1 = (10, 7), 5 = (48, 0), 0 = (3, 1).
    /// </summary>
    private static void PutKScales(byte[] b, int at)
    {
        b[at + 0] = 3;          // j=0 scale 3
        b[at + 4] = 1;          // j=0 min 1
        b[at + 1] = 0xC0 | 10;  // j=1 scale 10; top bits 3 = high bits of j=5 scale
        b[at + 5] = 7;          // j=1 min 7; top bits 0 = high bits of j=5 min
        b[at + 2] = 0x80;       // j=2 scale 0; top bits 2 = high bits of j=6 scale
        b[at + 6] = 0x40;       // j=2 min 0; top bits 1 = high bits of j=6 min
        b[at + 10] = 0x53;      // j=6 low nibbles: scale 3, min 5 -> scale 35, min 21
        b[at + 11] = 0x21;      // j=7: scale 1, min 2
        // j=5: scales[9] = 0 -> scale 0 | 3 << 4 = 48, min 0
    }

    [Fact]
    public void Q4_K()
    {
        // d @0, dmin @2, scales[12] @4, qs[128] @16. Chunk c (64 elements) = qs[32c..]: low nibbles are
        // sub-block 2c (elements 64c + l), high nibbles sub-block 2c + 1 (elements 64c + 32 + l).
        var b = new byte[144];
        PutHalf(b, 0, 2f);
        PutHalf(b, 2, 0.25f);
        PutKScales(b, 4);
        b[16 + 104] = 0x49;     // qs[96 + 8]: element 200 (sub 6) = 9, element 232 (sub 7) = 4
        b[16 + 8] = 0xF5;       // qs[8]: element 8 (sub 0) = 5, element 40 (sub 1) = 15
        b[16 + 74] = 0x30;      // qs[64 + 10]: element 138 (sub 4) = 0, element 170 (sub 5) = 3
        var y = Deq(GgmlType.Q4_K, b);
        Assert.Equal(2f * 35 * 9 - 0.25f * 21, y[200]);
        Assert.Equal(2f * 1 * 4 - 0.25f * 2, y[232]);
        Assert.Equal(2f * 3 * 5 - 0.25f * 1, y[8]);
        Assert.Equal(2f * 10 * 15 - 0.25f * 7, y[40]);
        Assert.Equal(2f * 48 * 3, y[170]);
        Assert.Equal(-0.25f * 21, y[201]);
        AssertDot(GgmlType.Q4_K, b, y);
    }

    [Fact]
    public void Q5_K()
    {
        // d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48. As q4_K, plus 5th bit: bit 2c of qh[l] for
        // element 64c + l, bit 2c + 1 for element 64c + 32 + l.
        var b = new byte[176];
        PutHalf(b, 0, 1f);
        PutHalf(b, 2, 1f);
        PutKScales(b, 4);
        b[48 + 104] = 0x49;     // qs[104]: element 200 low = 9, element 232 high = 4
        b[16 + 8] = 0xC0;       // qh[8]: bits 6, 7 -> +16 for elements 200 and 232; bit 0 clear for element 8
        b[48 + 8] = 0x05;       // qs[8]: element 8 = 5
        b[16 + 10] = 0x20;      // qh[10]: bit 5 -> +16 for element 64*2 + 32 + 10 = 170
        b[48 + 74] = 0x30;      // qs[74]: element 170 high = 3
        var y = Deq(GgmlType.Q5_K, b);
        Assert.Equal(35f * (9 + 16) - 21, y[200]);
        Assert.Equal(1f * (4 + 16) - 2, y[232]);
        Assert.Equal(3f * 5 - 1, y[8]);
        Assert.Equal(48f * (3 + 16), y[170]);
        Assert.Equal(0f, y[138]);       // sub 4 (j >= 4: scales[8] = 0, top bits of scales[0] = 0) -> 0
        AssertDot(GgmlType.Q5_K, b, y);
    }

    [Fact]
    public void Q6_K()
    {
        // ql[128] @0, qh[64] @128, scales[16] (int8) @192, d @208. Half h, l in 0..31:
        // element 128h + l      = lo(ql[64h + l])      | bits 0-1 of qh[32h + l] << 4
        // element 128h + l + 32 = lo(ql[64h + l + 32]) | bits 2-3
        // element 128h + l + 64 = hi(ql[64h + l])      | bits 4-5
        // element 128h + l + 96 = hi(ql[64h + l + 32]) | bits 6-7; q -= 32; x = d * scales[e/16] * q.
        var b = new byte[210];
        PutHalf(b, 208, 0.5f);
        b[86] = 0x3A;                   // ql[64 + 22]: element 150 low = 10, element 214 high = 3
        b[128 + 54] = 0x12;             // qh[32 + 22]: bits 0-1 = 2 (element 150), bits 4-5 = 1 (element 214)
        b[192 + 9] = unchecked((byte)-3);  // scale of sub-block 9 (elements 144..159)
        b[192 + 13] = 4;                // scale of sub-block 13 (elements 208..223)
        b[36] = 0xF0;                   // ql[32 + 4]: element 36 low = 0, element 100 high = 15
        b[128 + 4] = 0xC4;              // qh[4]: bits 6-7 = 3 (element 100), bits 2-3 = 1 (element 36)
        b[192 + 6] = 127;               // sub-block 6 (elements 96..111)
        b[192 + 2] = 1;                 // sub-block 2 (elements 32..47)
        var y = Deq(GgmlType.Q6_K, b);
        Assert.Equal(0.5f * -3 * ((10 | 2 << 4) - 32), y[150]);
        Assert.Equal(0.5f * 4 * ((3 | 1 << 4) - 32), y[214]);
        Assert.Equal(0.5f * 127 * ((15 | 3 << 4) - 32), y[100]);
        Assert.Equal(0.5f * 1 * ((0 | 1 << 4) - 32), y[36]);
        Assert.Equal(0.5f * -3 * (0 - 32), y[151]); // ql[87] = 0, qh[55] = 0
        Assert.Equal(0f, y[0]);         // scale 0
        AssertDot(GgmlType.Q6_K, b, y);
    }

    // ---------------------------------------------------------------- quantizer bytes (ggml reference rules)

    [Fact]
    public void Q8_0_Quantize_RoundsHalfAwayFromZero()
    {
        var x = new float[32];
        x[0] = 127f;  // amax -> d = 1
        x[1] = 2.5f;  // roundf -> 3 (not banker's 2)
        x[2] = -2.5f; // -> -3
        x[3] = 0.49f; // -> 0
        var b = QuantizeRow(GgmlType.Q8_0, x);
        Assert.Equal(HalfBits(1f), BitConverter.ToUInt16(b, 0));
        Assert.Equal(new sbyte[] { 127, 3, -3, 0 }, b.Skip(2).Take(4).Select(v => (sbyte)v).ToArray());
    }

    [Fact]
    public void Q4_0_Quantize_UsesSignedMaxOverMinusEight()
    {
        var x = new float[32];
        x[0] = -4f;   // largest magnitude, negative: d = -4 / -8 = 0.5, id = 2
        x[1] = 1.3f;  // 2.6 + 8.5 = 11.1 -> 11
        x[2] = 4f;    // 8 + 8.5 = 16.5 -> 16 -> clamped to 15
        x[16] = -1f;  // -2 + 8.5 = 6.5 -> 6 (truncation)
        var b = QuantizeRow(GgmlType.Q4_0, x);
        Assert.Equal(HalfBits(0.5f), BitConverter.ToUInt16(b, 0));
        Assert.Equal(0 | 6 << 4, b[2 + 0]);
        Assert.Equal(11 | 8 << 4, b[2 + 1]);
        Assert.Equal(15 | 8 << 4, b[2 + 2]);
        var y = DequantizeRow(GgmlType.Q4_0, b, 32);
        Assert.Equal(-4f, y[0]);
        Assert.Equal(1.5f, y[1]);
        Assert.Equal(3.5f, y[2]);
        Assert.Equal(-1f, y[16]);
    }

    [Fact]
    public void Q8_K_Quantize_MapsSignedMaxToMinus127_TiesToEven()
    {
        var x = new float[256];
        x[0] = 127f;  // iscale = -127/127 = -1, d = -1
        x[1] = 2.5f;  // nearest_int(-2.5) = -2 (ties to even)
        x[2] = 3.5f;  // nearest_int(-3.5) = -4
        for (int i = 16; i < 32; i++) x[i] = -1f; // bsums[1] = 16
        var b = QuantizeRow(GgmlType.Q8_K, x);
        Assert.Equal(-1f, BitConverter.ToSingle(b, 0));
        Assert.Equal(new sbyte[] { -127, -2, -4 }, b.Skip(4).Take(3).Select(v => (sbyte)v).ToArray());
        Assert.Equal(-127 - 2 - 4, BitConverter.ToInt16(b, 260));
        Assert.Equal(16, BitConverter.ToInt16(b, 262));
    }

    [Fact]
    public void Q8_1_Quantize_StoresSumTimesD()
    {
        var x = new float[32];
        x[0] = 127f; x[1] = -27f; x[2] = 3f;
        var b = QuantizeRow(GgmlType.Q8_1, x);
        Assert.Equal(HalfBits(1f), BitConverter.ToUInt16(b, 0));
        Assert.Equal(HalfBits(103f), BitConverter.ToUInt16(b, 2));
    }
}
