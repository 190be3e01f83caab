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
internal static class Dequantize
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

    /// <summary>block_q4_0: x[j] = d*(lo(qs[j]) - 8), x[j+16] = d*(hi(qs[j]) - 8).</summary>
    private static void Q4_0(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, BlockLayout.Q4_0.D);
        var qs = b.Slice(BlockLayout.Q4_0.Qs, BlockLayout.QK / 2);
        y = y[..BlockLayout.QK];
        for (int j = 0; j < 16; j++)
        {
            y[j] = ((qs[j] & 0xF) - 8) * d;
            y[j + 16] = ((qs[j] >> 4) - 8) * d;
        }
    }

    /// <summary>block_q4_1: x = d*q + m with unsigned 4-bit q.</summary>
    private static void Q4_1(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, BlockLayout.Q4_1.D), m = Half(b, BlockLayout.Q4_1.M);
        var qs = b.Slice(BlockLayout.Q4_1.Qs, BlockLayout.QK / 2);
        y = y[..BlockLayout.QK];
        for (int j = 0; j < 16; j++)
        {
            y[j] = (qs[j] & 0xF) * d + m;
            y[j + 16] = (qs[j] >> 4) * d + m;
        }
    }

    /// <summary>block_q5_0: x = d*(q - 16) with the 5-bit q of <see cref="BlockDecode.Q5Quant"/>.</summary>
    private static void Q5_0(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, BlockLayout.Q5_0.D);
        uint qh = BinaryPrimitives.ReadUInt32LittleEndian(b.Slice(BlockLayout.Q5_0.Qh, 4));
        var qs = b.Slice(BlockLayout.Q5_0.Qs, BlockLayout.QK / 2);
        y = y[..BlockLayout.QK];
        for (int j = 0; j < BlockLayout.QK; j++) y[j] = (BlockDecode.Q5Quant(qs, qh, j) - 16) * d;
    }

    /// <summary>block_q5_1: x = d*q + m with the unsigned 5-bit q of <see cref="BlockDecode.Q5Quant"/>.</summary>
    private static void Q5_1(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, BlockLayout.Q5_1.D), m = Half(b, BlockLayout.Q5_1.M);
        uint qh = BinaryPrimitives.ReadUInt32LittleEndian(b.Slice(BlockLayout.Q5_1.Qh, 4));
        var qs = b.Slice(BlockLayout.Q5_1.Qs, BlockLayout.QK / 2);
        y = y[..BlockLayout.QK];
        for (int j = 0; j < BlockLayout.QK; j++) y[j] = BlockDecode.Q5Quant(qs, qh, j) * d + m;
    }

    /// <summary>block_q8_0: x = d*q.</summary>
    private static void Q8_0(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, BlockLayout.Q8_0.D);
        var qs = MemoryMarshal.Cast<byte, sbyte>(b.Slice(BlockLayout.Q8_0.Qs, BlockLayout.QK));
        y = y[..BlockLayout.QK];
        for (int j = 0; j < BlockLayout.QK; j++) y[j] = qs[j] * d;
    }

    /// <summary>block_q8_1: x = d*q (s = d*sum(qs) is unused here).</summary>
    private static void Q8_1(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, BlockLayout.Q8_1.D);
        var qs = MemoryMarshal.Cast<byte, sbyte>(b.Slice(BlockLayout.Q8_1.Qs, BlockLayout.QK));
        y = y[..BlockLayout.QK];
        for (int j = 0; j < BlockLayout.QK; j++) y[j] = qs[j] * d;
    }

    // ---------------------------------------------------------------- 256-element super-blocks (k-quants)

    /// <summary>
    /// block_q2_K: sub-block s (16 elements) has scale d*(scales[s] &amp; 15) and min dmin*(scales[s] &gt;&gt; 4);
    /// x = d*sc*q - dmin*m with the 2-bit q of <see cref="BlockDecode.Q2Bits"/>.
    /// </summary>
    private static void Q2_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        var scales = b.Slice(BlockLayout.Q2_K.Scales, BlockLayout.QK_K / BlockLayout.Q2_K.SubBlock);
        var qs = b.Slice(BlockLayout.Q2_K.Qs, BlockLayout.QK_K / 4);
        float d = Half(b, BlockLayout.Q2_K.D), dmin = Half(b, BlockLayout.Q2_K.DMin);
        y = y[..BlockLayout.QK_K];
        for (int s = 0; s < scales.Length; s++)
        {
            float dl = d * BlockDecode.Q2_KScale(scales[s]), ml = dmin * BlockDecode.Q2_KMin(scales[s]);
            for (int e = BlockLayout.Q2_K.SubBlock * s; e < BlockLayout.Q2_K.SubBlock * (s + 1); e++)
                y[e] = dl * BlockDecode.Q2Bits(qs, e) - ml;
        }
    }

    /// <summary>
    /// The 6-bit scale of sub-block <paramref name="s"/> (0..15) of a q3_K block, still offset by 32
    /// (<see cref="BlockDecode.ScalesQ3_K(ReadOnlySpan{byte})"/> gives all sixteen, minus 32).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static int Q3_KScale(ReadOnlySpan<byte> scales, int s) => BlockDecode.ScalesQ3_K(scales).GetElement(s) + 32;

    /// <summary>
    /// block_q3_K: x = d*(scale(e/16) - 32)*(q - 4) with the 3-bit q of <see cref="BlockDecode.Q3_KQuant"/>.
    /// </summary>
    private static void Q3_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        var sc = BlockDecode.ScalesQ3_K(b.Slice(BlockLayout.Q3_K.Scales, BlockLayout.KScaleSize));
        float d = Half(b, BlockLayout.Q3_K.D);
        y = y[..BlockLayout.QK_K];
        for (int s = 0; s < BlockLayout.QK_K / BlockLayout.Q3_K.SubBlock; s++)
        {
            float dl = d * sc.GetElement(s);
            for (int e = BlockLayout.Q3_K.SubBlock * s; e < BlockLayout.Q3_K.SubBlock * (s + 1); e++)
                y[e] = dl * (BlockDecode.Q3_KQuant(b, e) - 4);
        }
    }

    /// <summary>
    /// ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j (0..7) of a q4_K/q5_K block
    /// (<see cref="BlockDecode.ScalesMinsK4(ReadOnlySpan{byte}, out ulong, out ulong)"/> gives all eight).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void ScaleMinK4(ReadOnlySpan<byte> scales, int j, out int scale, out int min) =>
        BlockDecode.ScaleMinK4(scales, j, out scale, out min);

    /// <summary>
    /// block_q4_K: chunk c (64 elements) uses qs[32c..32c+31]: low nibbles are sub-block 2c, high nibbles
    /// sub-block 2c+1. x = d*sc*q - dmin*m.
    /// </summary>
    private static void Q4_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, BlockLayout.Q4_K.D), dmin = Half(b, BlockLayout.Q4_K.DMin);
        BlockDecode.ScalesMinsK4(b.Slice(BlockLayout.Q4_K.Scales, BlockLayout.KScaleSize), out ulong sc, out ulong mn);
        var qs = b.Slice(BlockLayout.Q4_K.Qs, BlockLayout.QK_K / 2);
        y = y[..BlockLayout.QK_K];
        for (int c = 0; c < 4; c++)
        {
            float d1 = d * BlockDecode.ByteAt(sc, 2 * c), dm1 = dmin * BlockDecode.ByteAt(mn, 2 * c);
            float d2 = d * BlockDecode.ByteAt(sc, 2 * c + 1), dm2 = dmin * BlockDecode.ByteAt(mn, 2 * c + 1);
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

    /// <summary>block_q5_K: as q4_K, plus a 5th bit (<see cref="BlockDecode.Q5_KHighBit"/>).</summary>
    private static void Q5_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, BlockLayout.Q5_K.D), dmin = Half(b, BlockLayout.Q5_K.DMin);
        BlockDecode.ScalesMinsK4(b.Slice(BlockLayout.Q5_K.Scales, BlockLayout.KScaleSize), out ulong sc, out ulong mn);
        var qh = b.Slice(BlockLayout.Q5_K.Qh, BlockLayout.QK_K / 8);
        var qs = b.Slice(BlockLayout.Q5_K.Qs, BlockLayout.QK_K / 2);
        y = y[..BlockLayout.QK_K];
        for (int c = 0; c < 4; c++)
        {
            float d1 = d * BlockDecode.ByteAt(sc, 2 * c), dm1 = dmin * BlockDecode.ByteAt(mn, 2 * c);
            float d2 = d * BlockDecode.ByteAt(sc, 2 * c + 1), dm2 = dmin * BlockDecode.ByteAt(mn, 2 * c + 1);
            var q = qs.Slice(32 * c, 32);
            var lo = y.Slice(64 * c, 32);
            var hi = y.Slice(64 * c + 32, 32);
            for (int l = 0; l < 32; l++)
            {
                lo[l] = d1 * ((q[l] & 0xF) | BlockDecode.Q5_KHighBit(qh[l], 2 * c)) - dm1;
                hi[l] = d2 * ((q[l] >> 4) | BlockDecode.Q5_KHighBit(qh[l], 2 * c + 1)) - dm2;
            }
        }
    }

    /// <summary>block_q6_K: x = d*scales[e/16]*(q - 32) with the 6-bit q of <see cref="BlockDecode.Q6_KQuant"/>.</summary>
    private static void Q6_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        var sc = MemoryMarshal.Cast<byte, sbyte>(b.Slice(BlockLayout.Q6_K.Scales, BlockLayout.QK_K / BlockLayout.Q6_K.SubBlock));
        float d = Half(b, BlockLayout.Q6_K.D);
        y = y[..BlockLayout.QK_K];
        for (int s = 0; s < sc.Length; s++)
        {
            float dl = d * sc[s];
            for (int e = BlockLayout.Q6_K.SubBlock * s; e < BlockLayout.Q6_K.SubBlock * (s + 1); e++)
                y[e] = dl * (BlockDecode.Q6_KQuant(b, e) - 32);
        }
    }

    /// <summary>block_q8_K: x = d*q (bsums, the sums of 16 quants, are unused here).</summary>
    private static void Q8_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = BinaryPrimitives.ReadSingleLittleEndian(b.Slice(BlockLayout.Q8_K.D, sizeof(float)));
        var qs = MemoryMarshal.Cast<byte, sbyte>(b.Slice(BlockLayout.Q8_K.Qs, BlockLayout.QK_K));
        y = y[..BlockLayout.QK_K];
        for (int j = 0; j < BlockLayout.QK_K; j++) y[j] = d * qs[j];
    }
}
