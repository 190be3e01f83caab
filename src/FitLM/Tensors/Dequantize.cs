using System.Buffers.Binary;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace FitLM.Tensors;

/// <summary>
/// Dequantization of ggml tensor rows to float32. Block layouts are those of ggml (ggml-common.h) and the
/// formulas those of ggml's dequantize_row_* (ggml-quants.c); every multi-byte field is little-endian.
/// </summary>
public static class Dequantize
{
    /// <summary>
    /// Dequantizes one row: <paramref name="dst"/>.Length elements (a multiple of the type's block size) from
    /// exactly <see cref="GgmlTypes.RowBytes"/>(type, dst.Length) bytes of <paramref name="src"/>.
    /// </summary>
    public static void Row(GgmlType type, ReadOnlySpan<byte> src, Span<float> dst)
    {
        CheckRow(type, src.Length, dst.Length, "Dequantize.Row");
        switch (type)
        {
            case GgmlType.F32:
                MemoryMarshal.Cast<byte, float>(src).CopyTo(dst);
                return;
            case GgmlType.F16:
                TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<byte, Half>(src), dst);
                return;
            case GgmlType.BF16:
                BF16(src, dst);
                return;
        }
        int bs = GgmlTypes.BlockSize(type), bb = GgmlTypes.BlockBytes(type);
        int blocks = dst.Length / bs;
        for (int i = 0; i < blocks; i++)
            Block(type, src.Slice(i * bb, bb), dst.Slice(i * bs, bs));
    }

    /// <summary>
    /// Validates a row: <paramref name="elements"/> must be a multiple of the block size and
    /// <paramref name="bytes"/> exactly the row's byte size. Throws <see cref="FitLMException"/> otherwise.
    /// </summary>
    internal static void CheckRow(GgmlType type, int bytes, int elements, string who)
    {
        if (!GgmlTypes.IsSupported(type)) throw new FitLMException($"{who}: unsupported tensor type {type}");
        int bs = GgmlTypes.BlockSize(type);
        if (elements % bs != 0)
            throw new FitLMException($"{who}: a {type} row of {elements} elements is not a whole number of {bs}-element blocks");
        long expected = GgmlTypes.RowBytes(type, elements);
        if (bytes != expected)
            throw new FitLMException($"{who}: a {type} row of {elements} elements takes {expected} bytes, but {bytes} were given");
    }

    /// <summary>Dequantizes one block of a block-quantized type (not F32/F16/BF16). No checks.</summary>
    internal static void Block(GgmlType type, ReadOnlySpan<byte> b, Span<float> y)
    {
        switch (type)
        {
            case GgmlType.Q4_0: Q4_0(b, y); break;
            case GgmlType.Q4_1: Q4_1(b, y); break;
            case GgmlType.Q5_0: Q5_0(b, y); break;
            case GgmlType.Q5_1: Q5_1(b, y); break;
            case GgmlType.Q8_0: Q8_0(b, y); break;
            case GgmlType.Q8_1: Q8_1(b, y); break;
            case GgmlType.Q2_K: Q2_K(b, y); break;
            case GgmlType.Q3_K: Q3_K(b, y); break;
            case GgmlType.Q4_K: Q4_K(b, y); break;
            case GgmlType.Q5_K: Q5_K(b, y); break;
            case GgmlType.Q6_K: Q6_K(b, y); break;
            case GgmlType.Q8_K: Q8_K(b, y); break;
            default: throw new FitLMException($"{type} is not a block-quantized type");
        }
    }

    /// <summary>An IEEE half stored little-endian at <paramref name="offset"/>, as float.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float Half(ReadOnlySpan<byte> b, int offset) =>
        HalfToSingle(BinaryPrimitives.ReadUInt16LittleEndian(b.Slice(offset, 2)));

    /// <summary>
    /// Exact IEEE half to float, inlined (the library conversion is a call, which in vector loops costs far
    /// more than the arithmetic): place exponent and mantissa in a float's bit positions, which is the value
    /// times 2^-112 (subnormals included), and rescale by 2^112. Infinities and NaNs are mapped directly.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float HalfToSingle(ushort h)
    {
        uint sign = (uint)(h & 0x8000) << 16;
        uint em = (uint)(h & 0x7FFF);
        uint bits = em >= 0x7C00
            ? 0x7F800000u | ((em & 0x3FF) << 13)
            : BitConverter.SingleToUInt32Bits(BitConverter.UInt32BitsToSingle(em << 13) * 5.192296858534828E+33f);
        return BitConverter.UInt32BitsToSingle(bits | sign);
    }

    // ---------------------------------------------------------------- 16-bit floats

    /// <summary>bfloat16 is the upper half of a float32: widen by shifting 16 bits left.</summary>
    private static void BF16(ReadOnlySpan<byte> src, Span<float> dst)
    {
        var h = MemoryMarshal.Cast<byte, ushort>(src);
        var bits = MemoryMarshal.Cast<float, uint>(dst);
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var hv = MemoryMarshal.Cast<ushort, Vector256<ushort>>(h);
            for (int v = 0; v < hv.Length; v++, i += 16)
            {
                var (lo, hi) = Vector256.Widen(hv[v]);
                Vector256.ShiftLeft(lo, 16).CopyTo(bits.Slice(i, 8));
                Vector256.ShiftLeft(hi, 16).CopyTo(bits.Slice(i + 8, 8));
            }
        }
        for (; i < h.Length; i++) bits[i] = (uint)h[i] << 16;
    }

    // ---------------------------------------------------------------- 32-element blocks

    /// <summary>block_q4_0 (18 bytes): half d; u8 qs[16]. x[j] = d*(lo(qs[j]) - 8), x[j+16] = d*(hi(qs[j]) - 8).</summary>
    private static void Q4_0(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, 0);
        var qs = b.Slice(2, 16);
        y = y[..32];
        for (int j = 0; j < 16; j++)
        {
            y[j] = ((qs[j] & 0xF) - 8) * d;
            y[j + 16] = ((qs[j] >> 4) - 8) * d;
        }
    }

    /// <summary>block_q4_1 (20 bytes): half d, m; u8 qs[16]. x = d*q + m with unsigned 4-bit q.</summary>
    private static void Q4_1(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, 0), m = Half(b, 2);
        var qs = b.Slice(4, 16);
        y = y[..32];
        for (int j = 0; j < 16; j++)
        {
            y[j] = (qs[j] & 0xF) * d + m;
            y[j + 16] = (qs[j] >> 4) * d + m;
        }
    }

    /// <summary>
    /// block_q5_0 (22 bytes): half d; u32 qh (bit j = 5th bit of element j); u8 qs[16] (low nibbles as q4_0).
    /// x = d*(q - 16).
    /// </summary>
    private static void Q5_0(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, 0);
        uint qh = BinaryPrimitives.ReadUInt32LittleEndian(b.Slice(2, 4));
        var qs = b.Slice(6, 16);
        y = y[..32];
        for (int j = 0; j < 16; j++)
        {
            int h0 = (int)((qh >> j) & 1) << 4;
            int h1 = (int)((qh >> (j + 16)) & 1) << 4;
            y[j] = (((qs[j] & 0xF) | h0) - 16) * d;
            y[j + 16] = (((qs[j] >> 4) | h1) - 16) * d;
        }
    }

    /// <summary>block_q5_1 (24 bytes): half d, m; u32 qh; u8 qs[16]. x = d*q + m with unsigned 5-bit q.</summary>
    private static void Q5_1(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, 0), m = Half(b, 2);
        uint qh = BinaryPrimitives.ReadUInt32LittleEndian(b.Slice(4, 4));
        var qs = b.Slice(8, 16);
        y = y[..32];
        for (int j = 0; j < 16; j++)
        {
            int h0 = (int)((qh >> j) & 1) << 4;
            int h1 = (int)((qh >> (j + 16)) & 1) << 4;
            y[j] = ((qs[j] & 0xF) | h0) * d + m;
            y[j + 16] = ((qs[j] >> 4) | h1) * d + m;
        }
    }

    /// <summary>block_q8_0 (34 bytes): half d; i8 qs[32]. x = d*q.</summary>
    private static void Q8_0(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, 0);
        var qs = MemoryMarshal.Cast<byte, sbyte>(b.Slice(2, 32));
        y = y[..32];
        for (int j = 0; j < 32; j++) y[j] = qs[j] * d;
    }

    /// <summary>block_q8_1 (36 bytes): half d; half s (= d*sum(qs), unused here); i8 qs[32]. x = d*q.</summary>
    private static void Q8_1(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, 0);
        var qs = MemoryMarshal.Cast<byte, sbyte>(b.Slice(4, 32));
        y = y[..32];
        for (int j = 0; j < 32; j++) y[j] = qs[j] * d;
    }

    // ---------------------------------------------------------------- 256-element super-blocks (k-quants)

    /// <summary>
    /// block_q2_K (84 bytes): u8 scales[16]; u8 qs[64]; half d; half dmin.
    /// Sub-block s (16 elements) has scale d*(scales[s] &amp; 15) and min dmin*(scales[s] &gt;&gt; 4).
    /// Element e = 128*h + 32*k + l (h half, k 2-bit plane, l 0..31) is bits 2k..2k+1 of qs[32*h + l];
    /// x = d*sc*q - dmin*m.
    /// </summary>
    private static void Q2_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        var scales = b[..16];
        var qs = b.Slice(16, 64);
        float d = Half(b, 80), dmin = Half(b, 82);
        y = y[..256];
        for (int h = 0; h < 2; h++)
        {
            var q = qs.Slice(32 * h, 32);
            for (int k = 0; k < 4; k++)
            {
                int shift = 2 * k;
                for (int half = 0; half < 2; half++)
                {
                    int s = 8 * h + 2 * k + half;
                    float dl = d * (scales[s] & 0xF), ml = dmin * (scales[s] >> 4);
                    int e0 = 128 * h + 32 * k + 16 * half;
                    for (int l = 0; l < 16; l++)
                        y[e0 + l] = dl * ((q[16 * half + l] >> shift) & 3) - ml;
                }
            }
        }
    }

    /// <summary>
    /// The 6-bit scale of sub-block <paramref name="s"/> (0..15) of a q3_K block, still offset by 32: the low
    /// 4 bits are the low nibble of scales[s] (s &lt; 8) or the high nibble of scales[s-8]; the high 2 bits are
    /// bits 2*(s/4)..2*(s/4)+1 of scales[8 + s%4].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static int Q3_KScale(ReadOnlySpan<byte> scales, int s)
    {
        int low = s < 8 ? scales[s] & 0xF : scales[s - 8] >> 4;
        int high = (scales[8 + (s & 3)] >> (2 * (s >> 2))) & 3;
        return low | (high << 4);
    }

    /// <summary>
    /// block_q3_K (110 bytes): u8 hmask[32]; u8 qs[64]; u8 scales[12]; half d.
    /// Element e = 128*h + 32*k + l: low 2 bits are bits 2k..2k+1 of qs[32*h + l], the high bit is bit e/32
    /// of hmask[l]; q = low - (high ? 0 : 4) in -4..3. x = d*(scale(e/16) - 32)*q.
    /// </summary>
    private static void Q3_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        var hmask = b[..32];
        var qs = b.Slice(32, 64);
        var scales = b.Slice(96, 12);
        float d = Half(b, 108);
        y = y[..256];
        for (int h = 0; h < 2; h++)
        {
            var q = qs.Slice(32 * h, 32);
            for (int k = 0; k < 4; k++)
            {
                int shift = 2 * k;
                int bit = 4 * h + k; // == e / 32
                int s = 8 * h + 2 * k;
                float dl0 = d * (Q3_KScale(scales, s) - 32);
                float dl1 = d * (Q3_KScale(scales, s + 1) - 32);
                var yk = y.Slice(128 * h + 32 * k, 32);
                // q = low 2 bits + 4 * high bit - 4, i.e. ggml's low - (high bit set ? 0 : 4)
                for (int l = 0; l < 16; l++)
                    yk[l] = dl0 * ((((q[l] >> shift) & 3) | (((hmask[l] >> bit) & 1) << 2)) - 4);
                for (int l = 16; l < 32; l++)
                    yk[l] = dl1 * ((((q[l] >> shift) & 3) | (((hmask[l] >> bit) & 1) << 2)) - 4);
            }
        }
    }

    /// <summary>
    /// ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j (0..7) of a q4_K/q5_K block.
    /// j &lt; 4: scale = scales[j] &amp; 63, min = scales[j+4] &amp; 63. j &gt;= 4: the low 4 bits come from the
    /// nibbles of scales[j+4] (scale low, min high) and the high 2 bits from the top bits of scales[j-4]
    /// (scale) and scales[j] (min).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void ScaleMinK4(ReadOnlySpan<byte> scales, int j, out int scale, out int min)
    {
        if (j < 4)
        {
            scale = scales[j] & 63;
            min = scales[j + 4] & 63;
        }
        else
        {
            scale = (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4);
            min = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        }
    }

    /// <summary>
    /// block_q4_K (144 bytes): half d; half dmin; u8 scales[12] (6-bit scale/min pairs); u8 qs[128].
    /// Chunk c (64 elements) uses qs[32c..32c+31]: low nibbles are sub-block 2c, high nibbles sub-block 2c+1.
    /// x = d*sc*q - dmin*m.
    /// </summary>
    private static void Q4_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, 0), dmin = Half(b, 2);
        var scales = b.Slice(4, 12);
        var qs = b.Slice(16, 128);
        y = y[..256];
        for (int c = 0; c < 4; c++)
        {
            ScaleMinK4(scales, 2 * c, out int sc1, out int m1);
            ScaleMinK4(scales, 2 * c + 1, out int sc2, out int m2);
            float d1 = d * sc1, dm1 = dmin * m1, d2 = d * sc2, dm2 = dmin * m2;
            var q = qs.Slice(32 * c, 32);
            var lo = y.Slice(64 * c, 32);
            var hi = y.Slice(64 * c + 32, 32);
            for (int l = 0; l < 32; l++)
            {
                lo[l] = d1 * (q[l] & 0xF) - dm1;
                hi[l] = d2 * (q[l] >> 4) - dm2;
            }
        }
    }

    /// <summary>
    /// block_q5_K (176 bytes): half d; half dmin; u8 scales[12]; u8 qh[32]; u8 qs[128].
    /// As q4_K, plus a 5th bit: bit 2c of qh[l] for element 64c + l, bit 2c+1 for element 64c + 32 + l.
    /// </summary>
    private static void Q5_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, 0), dmin = Half(b, 2);
        var scales = b.Slice(4, 12);
        var qh = b.Slice(16, 32);
        var qs = b.Slice(48, 128);
        y = y[..256];
        for (int c = 0; c < 4; c++)
        {
            ScaleMinK4(scales, 2 * c, out int sc1, out int m1);
            ScaleMinK4(scales, 2 * c + 1, out int sc2, out int m2);
            float d1 = d * sc1, dm1 = dmin * m1, d2 = d * sc2, dm2 = dmin * m2;
            var q = qs.Slice(32 * c, 32);
            var lo = y.Slice(64 * c, 32);
            var hi = y.Slice(64 * c + 32, 32);
            for (int l = 0; l < 32; l++)
            {
                int h1 = ((qh[l] >> (2 * c)) & 1) << 4;
                int h2 = ((qh[l] >> (2 * c + 1)) & 1) << 4;
                lo[l] = d1 * ((q[l] & 0xF) | h1) - dm1;
                hi[l] = d2 * ((q[l] >> 4) | h2) - dm2;
            }
        }
    }

    /// <summary>
    /// block_q6_K (210 bytes): u8 ql[128]; u8 qh[64]; i8 scales[16]; half d.
    /// In half h (128 elements), for l in 0..31 with L = ql[64h..], H = qh[32h + l]:
    /// element l: lo(L[l]) | (H bits 0-1) &lt;&lt; 4; l+32: lo(L[l+32]) | (bits 2-3); l+64: hi(L[l]) | (bits 4-5);
    /// l+96: hi(L[l+32]) | (bits 6-7). q is that minus 32; x = d*scales[e/16]*q.
    /// </summary>
    private static void Q6_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        var qlAll = b[..128];
        var qhAll = b.Slice(128, 64);
        var sc = MemoryMarshal.Cast<byte, sbyte>(b.Slice(192, 16));
        float d = Half(b, 208);
        y = y[..256];
        for (int h = 0; h < 2; h++)
        {
            var ql = qlAll.Slice(64 * h, 64);
            var qh = qhAll.Slice(32 * h, 32);
            var yh = y.Slice(128 * h, 128);
            int s0 = 8 * h;
            for (int l = 0; l < 32; l++)
            {
                int s = s0 + l / 16;
                int q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                yh[l] = d * sc[s] * q1;
                yh[l + 32] = d * sc[s + 2] * q2;
                yh[l + 64] = d * sc[s + 4] * q3;
                yh[l + 96] = d * sc[s + 6] * q4;
            }
        }
    }

    /// <summary>block_q8_K (292 bytes): float d; i8 qs[256]; i16 bsums[16] (sums of 16 quants, unused here). x = d*q.</summary>
    private static void Q8_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = BinaryPrimitives.ReadSingleLittleEndian(b[..4]);
        var qs = MemoryMarshal.Cast<byte, sbyte>(b.Slice(4, 256));
        y = y[..256];
        for (int j = 0; j < 256; j++) y[j] = d * qs[j];
    }
}
