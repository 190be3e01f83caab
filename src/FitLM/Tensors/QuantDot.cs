using System.Buffers.Binary;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace FitLM.Tensors;

/// <summary>
/// Dot products of one ggml-encoded row with a float32 vector, accumulated in float32, without
/// materializing the dequantized row. Every type except F16 has a hand-vectorized kernel (Vector256; F16
/// converts through TensorPrimitives); every type also has the reference path (<see cref="Reference"/>: dequantize a block into a
/// stack buffer, then <see cref="TensorPrimitives.Dot(ReadOnlySpan{float}, ReadOnlySpan{float})"/>), which
/// the vectorized kernels are tested against.
/// </summary>
internal static class QuantDot
{
    /// <summary>
    /// The dot product of the row <paramref name="row"/> (exactly <see cref="GgmlTypes.RowBytes"/>(type, x.Length)
    /// bytes) with <paramref name="x"/> (a multiple of the type's block size).
    /// </summary>
    public static float Dot(GgmlType type, ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        Dequantize.CheckRow(type, row.Length, x.Length, "QuantDot.Dot");
        if (Vector256.IsHardwareAccelerated)
        {
            switch (type)
            {
                case GgmlType.F32: return TensorPrimitives.Dot(MemoryMarshal.Cast<byte, float>(row), x);
                case GgmlType.BF16: return BF16(row, x);
                case GgmlType.Q4_0: return Q4_0(row, x);
                case GgmlType.Q4_1: return Q4_1(row, x);
                case GgmlType.Q5_0: return Q5_0(row, x);
                case GgmlType.Q5_1: return Q5_1(row, x);
                case GgmlType.Q8_0: return Q8_0(row, x);
                case GgmlType.Q8_1: return Q8_1(row, x);
                case GgmlType.Q2_K: return Q2_K(row, x);
                case GgmlType.Q3_K: return Q3_K(row, x);
                case GgmlType.Q4_K: return Q4_K(row, x);
                case GgmlType.Q5_K: return Q5_K(row, x);
                case GgmlType.Q6_K: return Q6_K(row, x);
                case GgmlType.Q8_K: return Q8_K(row, x);
            }
        }
        return Reference(type, row, x);
    }

    /// <summary>
    /// The reference path for every type: dequantize block by block (256 elements at a time for the float
    /// types) into a stack buffer and accumulate <see cref="TensorPrimitives.Dot(ReadOnlySpan{float}, ReadOnlySpan{float})"/>.
    /// </summary>
    internal static float Reference(GgmlType type, ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        Dequantize.CheckRow(type, row.Length, x.Length, "QuantDot.Dot");
        int bs = GgmlTypes.BlockSize(type), bb = GgmlTypes.BlockBytes(type);
        bool floatType = bs == 1;
        int chunk = floatType ? 256 : bs;
        Span<float> buf = stackalloc float[256];
        float sum = 0;
        for (int i = 0; i < x.Length; i += chunk)
        {
            int n = Math.Min(chunk, x.Length - i);
            var src = row.Slice(i / bs * bb, n / bs * bb);
            var y = buf[..n];
            if (floatType) Dequantize.Row(type, src, y);
            else Dequantize.Block(type, src, y);
            sum += TensorPrimitives.Dot(y, x.Slice(i, n));
        }
        return sum;
    }

    // ---------------------------------------------------------------- vector helpers

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Fma(Vector256<float> a, Vector256<float> b, Vector256<float> c) =>
        Vector256.MultiplyAddEstimate(a, b, c);

    /// <summary>32 unsigned bytes to four vectors of 8 floats, in element order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Widen(Vector256<byte> v, out Vector256<float> f0, out Vector256<float> f1,
        out Vector256<float> f2, out Vector256<float> f3)
    {
        var (w0, w1) = Vector256.Widen(v);
        var (a, b) = Vector256.Widen(w0);
        var (c, d) = Vector256.Widen(w1);
        f0 = Vector256.ConvertToSingle(a.AsInt32());
        f1 = Vector256.ConvertToSingle(b.AsInt32());
        f2 = Vector256.ConvertToSingle(c.AsInt32());
        f3 = Vector256.ConvertToSingle(d.AsInt32());
    }

    /// <summary>32 signed bytes to four vectors of 8 floats, in element order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Widen(Vector256<sbyte> v, out Vector256<float> f0, out Vector256<float> f1,
        out Vector256<float> f2, out Vector256<float> f3)
    {
        var (w0, w1) = Vector256.Widen(v);
        var (a, b) = Vector256.Widen(w0);
        var (c, d) = Vector256.Widen(w1);
        f0 = Vector256.ConvertToSingle(a);
        f1 = Vector256.ConvertToSingle(b);
        f2 = Vector256.ConvertToSingle(c);
        f3 = Vector256.ConvertToSingle(d);
    }

    /// <summary>Σ q[j]*x[j] over 32 elements, as a vector of 8 partial sums.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Dot32(Vector256<sbyte> q, ReadOnlySpan<float> x32)
    {
        var xv = MemoryMarshal.Cast<float, Vector256<float>>(x32[..32]);
        Widen(q, out var f0, out var f1, out var f2, out var f3);
        return Fma(f3, xv[3], Fma(f2, xv[2], Fma(f1, xv[1], f0 * xv[0])));
    }

    /// <summary>Σ q[j]*x[j] over 32 elements with unsigned quants, as a vector of 8 partial sums.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Dot32(Vector256<byte> q, ReadOnlySpan<float> x32)
    {
        var xv = MemoryMarshal.Cast<float, Vector256<float>>(x32[..32]);
        Widen(q, out var f0, out var f1, out var f2, out var f3);
        return Fma(f3, xv[3], Fma(f2, xv[2], Fma(f1, xv[1], f0 * xv[0])));
    }

    /// <summary>Σ x[j] over 32 elements, as a vector of 8 partial sums.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Sum32(ReadOnlySpan<float> x32)
    {
        var xv = MemoryMarshal.Cast<float, Vector256<float>>(x32[..32]);
        return (xv[0] + xv[1]) + (xv[2] + xv[3]);
    }

    /// <summary>The 5th bits of a q5_0/q5_1 block (u32 qh at <paramref name="qh"/>) as 32 bytes of 0 or 16.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> FifthBits(ReadOnlySpan<byte> qh) =>
        BlockDecode.Q5HighBits(BinaryPrimitives.ReadUInt32LittleEndian(qh));

    // ---------------------------------------------------------------- vectorized kernels

    private static float BF16(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var h = MemoryMarshal.Cast<byte, ushort>(row);
        var acc = Vector256<float>.Zero;
        int i = 0;
        for (; i + 16 <= x.Length; i += 16)
        {
            var (lo, hi) = Vector256.Widen(Vector256.Create(h.Slice(i, 16)));
            var xv = MemoryMarshal.Cast<float, Vector256<float>>(x.Slice(i, 16));
            acc = Fma(Vector256.ShiftLeft(lo, 16).AsSingle(), xv[0], acc);
            acc = Fma(Vector256.ShiftLeft(hi, 16).AsSingle(), xv[1], acc);
        }
        float sum = Vector256.Sum(acc);
        for (; i < x.Length; i++) sum += BitConverter.UInt32BitsToSingle((uint)h[i] << 16) * x[i];
        return sum;
    }

    private static float Q8_0(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var acc = Vector256<float>.Zero;
        int nb = x.Length / 32;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * BlockLayout.Q8_0.Bytes, BlockLayout.Q8_0.Bytes);
            float d = Dequantize.Half(b, BlockLayout.Q8_0.D);
            var q = MemoryMarshal.Read<Vector256<sbyte>>(b.Slice(BlockLayout.Q8_0.Qs, 32));
            acc = Fma(Dot32(q, x.Slice(i * 32, 32)), Vector256.Create(d), acc);
        }
        return Vector256.Sum(acc);
    }

    private static float Q4_0(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var acc = Vector256<float>.Zero;
        var eight = Vector256.Create((sbyte)8);
        int nb = x.Length / 32;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * BlockLayout.Q4_0.Bytes, BlockLayout.Q4_0.Bytes);
            float d = Dequantize.Half(b, BlockLayout.Q4_0.D);
            // The nibbles in element order, offset by 8.
            var q = BlockDecode.Nibbles(MemoryMarshal.Read<Vector128<byte>>(b.Slice(BlockLayout.Q4_0.Qs, 16))).AsSByte() - eight;
            acc = Fma(Dot32(q, x.Slice(i * 32, 32)), Vector256.Create(d), acc);
        }
        return Vector256.Sum(acc);
    }

    private static float Q4_K(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var acc = Vector256<float>.Zero;
        int nb = x.Length / BlockLayout.QK_K;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * BlockLayout.Q4_K.Bytes, BlockLayout.Q4_K.Bytes);
            float d = Dequantize.Half(b, BlockLayout.Q4_K.D), dmin = Dequantize.Half(b, BlockLayout.Q4_K.DMin);
            BlockDecode.ScalesMinsK4(b.Slice(BlockLayout.Q4_K.Scales, BlockLayout.KScaleSize), out ulong sc, out ulong mn);
            var qs = b.Slice(BlockLayout.Q4_K.Qs, BlockLayout.QK_K / 2);
            var xb = x.Slice(i * BlockLayout.QK_K, BlockLayout.QK_K);
            for (int c = 0; c < 4; c++)
            {
                BlockDecode.SplitNibbles(MemoryMarshal.Read<Vector256<byte>>(qs.Slice(32 * c, 32)), out var lo, out var hi);
                var xlo = xb.Slice(64 * c, 32);
                var xhi = xb.Slice(64 * c + 32, 32);
                // Σ (d*sc*q - dmin*m) x = d*sc Σ q x - dmin*m Σ x
                acc = Fma(Dot32(lo, xlo), Vector256.Create(d * BlockDecode.ByteAt(sc, 2 * c)), acc);
                acc = Fma(Sum32(xlo), Vector256.Create(-dmin * BlockDecode.ByteAt(mn, 2 * c)), acc);
                acc = Fma(Dot32(hi, xhi), Vector256.Create(d * BlockDecode.ByteAt(sc, 2 * c + 1)), acc);
                acc = Fma(Sum32(xhi), Vector256.Create(-dmin * BlockDecode.ByteAt(mn, 2 * c + 1)), acc);
            }
        }
        return Vector256.Sum(acc);
    }

    private static unsafe float Q6_K(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var acc = Vector256<float>.Zero;
        int nb = x.Length / BlockLayout.QK_K;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * BlockLayout.Q6_K.Bytes, BlockLayout.Q6_K.Bytes);
            var sc = MemoryMarshal.Cast<byte, sbyte>(b.Slice(BlockLayout.Q6_K.Scales, BlockLayout.QK_K / BlockLayout.Q6_K.SubBlock));
            float d = Dequantize.Half(b, BlockLayout.Q6_K.D);
            for (int h = 0; h < 2; h++)
            {
                Vector256<byte> q0, q1, q2, q3;
                fixed (byte* p = b) BlockDecode.Q6_KQuants(p, h, out q0, out q1, out q2, out q3);
                var xh = x.Slice(BlockLayout.QK_K * i + 128 * h, 128);
                // Plane k holds elements 32k..32k+31 of this half, sub-blocks 8h + 2k and 8h + 2k + 1.
                acc = Q6_KPlane(q0, xh[..32], d * sc[8 * h], d * sc[8 * h + 1], acc);
                acc = Q6_KPlane(q1, xh.Slice(32, 32), d * sc[8 * h + 2], d * sc[8 * h + 3], acc);
                acc = Q6_KPlane(q2, xh.Slice(64, 32), d * sc[8 * h + 4], d * sc[8 * h + 5], acc);
                acc = Q6_KPlane(q3, xh.Slice(96, 32), d * sc[8 * h + 6], d * sc[8 * h + 7], acc);
            }
        }
        return Vector256.Sum(acc);
    }

    /// <summary>acc + the 32 six-bit quants (0..63, offset by 32) times x, the first 16 scaled by s0 and the last 16 by s1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Q6_KPlane(Vector256<byte> q6, ReadOnlySpan<float> x32, float s0, float s1, Vector256<float> acc)
    {
        var q = q6.AsSByte() - Vector256.Create((sbyte)32);
        Widen(q, out var f0, out var f1, out var f2, out var f3);
        var xv = MemoryMarshal.Cast<float, Vector256<float>>(x32[..32]);
        acc = Fma(Fma(f1, xv[1], f0 * xv[0]), Vector256.Create(s0), acc);
        return Fma(Fma(f3, xv[3], f2 * xv[2]), Vector256.Create(s1), acc);
    }

    private static float Q4_1(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var acc = Vector256<float>.Zero;
        int nb = x.Length / 32;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * BlockLayout.Q4_1.Bytes, BlockLayout.Q4_1.Bytes);
            float d = Dequantize.Half(b, BlockLayout.Q4_1.D), m = Dequantize.Half(b, BlockLayout.Q4_1.M);
            var q = BlockDecode.Nibbles(MemoryMarshal.Read<Vector128<byte>>(b.Slice(BlockLayout.Q4_1.Qs, 16)));
            var xb = x.Slice(i * 32, 32);
            // Σ (d*q + m) x = d Σ q x + m Σ x
            acc = Fma(Dot32(q, xb), Vector256.Create(d), acc);
            acc = Fma(Sum32(xb), Vector256.Create(m), acc);
        }
        return Vector256.Sum(acc);
    }

    private static float Q5_0(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var acc = Vector256<float>.Zero;
        var sixteen = Vector256.Create((sbyte)16);
        int nb = x.Length / 32;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * BlockLayout.Q5_0.Bytes, BlockLayout.Q5_0.Bytes);
            float d = Dequantize.Half(b, BlockLayout.Q5_0.D);
            var q = BlockDecode.Nibbles(MemoryMarshal.Read<Vector128<byte>>(b.Slice(BlockLayout.Q5_0.Qs, 16))) | FifthBits(b.Slice(BlockLayout.Q5_0.Qh, 4));
            acc = Fma(Dot32(q.AsSByte() - sixteen, x.Slice(i * 32, 32)), Vector256.Create(d), acc);
        }
        return Vector256.Sum(acc);
    }

    private static float Q5_1(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var acc = Vector256<float>.Zero;
        int nb = x.Length / 32;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * BlockLayout.Q5_1.Bytes, BlockLayout.Q5_1.Bytes);
            float d = Dequantize.Half(b, BlockLayout.Q5_1.D), m = Dequantize.Half(b, BlockLayout.Q5_1.M);
            var q = BlockDecode.Nibbles(MemoryMarshal.Read<Vector128<byte>>(b.Slice(BlockLayout.Q5_1.Qs, 16))) | FifthBits(b.Slice(BlockLayout.Q5_1.Qh, 4));
            var xb = x.Slice(i * 32, 32);
            acc = Fma(Dot32(q, xb), Vector256.Create(d), acc);
            acc = Fma(Sum32(xb), Vector256.Create(m), acc);
        }
        return Vector256.Sum(acc);
    }

    private static float Q8_1(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var acc = Vector256<float>.Zero;
        int nb = x.Length / 32;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * BlockLayout.Q8_1.Bytes, BlockLayout.Q8_1.Bytes);
            float d = Dequantize.Half(b, BlockLayout.Q8_1.D);
            var q = MemoryMarshal.Read<Vector256<sbyte>>(b.Slice(BlockLayout.Q8_1.Qs, 32));
            acc = Fma(Dot32(q, x.Slice(i * 32, 32)), Vector256.Create(d), acc);
        }
        return Vector256.Sum(acc);
    }

    private static float Q2_K(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var acc = Vector256<float>.Zero;
        int nb = x.Length / BlockLayout.QK_K;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * BlockLayout.Q2_K.Bytes, BlockLayout.Q2_K.Bytes);
            var scales = b.Slice(BlockLayout.Q2_K.Scales, BlockLayout.QK_K / BlockLayout.Q2_K.SubBlock);
            float d = Dequantize.Half(b, BlockLayout.Q2_K.D), dmin = Dequantize.Half(b, BlockLayout.Q2_K.DMin);
            for (int h = 0; h < 2; h++)
            {
                var raw = MemoryMarshal.Read<Vector256<byte>>(b.Slice(BlockLayout.Q2_K.Qs + 32 * h, 32));
                for (int k = 0; k < 4; k++)
                {
                    // Plane k: elements 128h + 32k + (0..31), sub-blocks s (first 16) and s + 1.
                    var q = BlockDecode.Q2Plane(raw, k);
                    Widen(q, out var f0, out var f1, out var f2, out var f3);
                    var xv = MemoryMarshal.Cast<float, Vector256<float>>(x.Slice(BlockLayout.QK_K * i + 128 * h + 32 * k, 32));
                    int s = 8 * h + 2 * k;
                    byte sc0 = scales[s], sc1 = scales[s + 1];
                    acc = Fma(Fma(f1, xv[1], f0 * xv[0]), Vector256.Create(d * BlockDecode.Q2_KScale(sc0)), acc);
                    acc = Fma(xv[0] + xv[1], Vector256.Create(-dmin * BlockDecode.Q2_KMin(sc0)), acc);
                    acc = Fma(Fma(f3, xv[3], f2 * xv[2]), Vector256.Create(d * BlockDecode.Q2_KScale(sc1)), acc);
                    acc = Fma(xv[2] + xv[3], Vector256.Create(-dmin * BlockDecode.Q2_KMin(sc1)), acc);
                }
            }
        }
        return Vector256.Sum(acc);
    }

    private static float Q3_K(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var acc = Vector256<float>.Zero;
        var four = Vector256.Create((sbyte)4);
        int nb = x.Length / BlockLayout.QK_K;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * BlockLayout.Q3_K.Bytes, BlockLayout.Q3_K.Bytes);
            var hm = MemoryMarshal.Read<Vector256<byte>>(b.Slice(BlockLayout.Q3_K.HMask, 32));
            var scales = BlockDecode.ScalesQ3_K(b.Slice(BlockLayout.Q3_K.Scales, BlockLayout.KScaleSize));
            float d = Dequantize.Half(b, BlockLayout.Q3_K.D);
            for (int h = 0; h < 2; h++)
            {
                var raw = MemoryMarshal.Read<Vector256<byte>>(b.Slice(BlockLayout.Q3_K.Qs + 32 * h, 32));
                for (int k = 0; k < 4; k++)
                {
                    // Plane k of half h: q = the 3-bit quant - 4.
                    var q = BlockDecode.Q3_KPlane(raw, hm, h, k).AsSByte() - four;
                    Widen(q, out var f0, out var f1, out var f2, out var f3);
                    var xv = MemoryMarshal.Cast<float, Vector256<float>>(x.Slice(BlockLayout.QK_K * i + 128 * h + 32 * k, 32));
                    int s = 8 * h + 2 * k;
                    acc = Fma(Fma(f1, xv[1], f0 * xv[0]), Vector256.Create(d * scales.GetElement(s)), acc);
                    acc = Fma(Fma(f3, xv[3], f2 * xv[2]), Vector256.Create(d * scales.GetElement(s + 1)), acc);
                }
            }
        }
        return Vector256.Sum(acc);
    }

    private static float Q5_K(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var acc = Vector256<float>.Zero;
        int nb = x.Length / BlockLayout.QK_K;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * BlockLayout.Q5_K.Bytes, BlockLayout.Q5_K.Bytes);
            float d = Dequantize.Half(b, BlockLayout.Q5_K.D), dmin = Dequantize.Half(b, BlockLayout.Q5_K.DMin);
            BlockDecode.ScalesMinsK4(b.Slice(BlockLayout.Q5_K.Scales, BlockLayout.KScaleSize), out ulong sc, out ulong mn);
            var qh = MemoryMarshal.Read<Vector256<byte>>(b.Slice(BlockLayout.Q5_K.Qh, 32));
            var qs = b.Slice(BlockLayout.Q5_K.Qs, BlockLayout.QK_K / 2);
            var xb = x.Slice(i * BlockLayout.QK_K, BlockLayout.QK_K);
            for (int c = 0; c < 4; c++)
            {
                BlockDecode.SplitNibbles(MemoryMarshal.Read<Vector256<byte>>(qs.Slice(32 * c, 32)), out var lo, out var hi);
                lo |= BlockDecode.BitTo4(qh, 2 * c);
                hi |= BlockDecode.BitTo4(qh, 2 * c + 1);
                var xlo = xb.Slice(64 * c, 32);
                var xhi = xb.Slice(64 * c + 32, 32);
                acc = Fma(Dot32(lo, xlo), Vector256.Create(d * BlockDecode.ByteAt(sc, 2 * c)), acc);
                acc = Fma(Sum32(xlo), Vector256.Create(-dmin * BlockDecode.ByteAt(mn, 2 * c)), acc);
                acc = Fma(Dot32(hi, xhi), Vector256.Create(d * BlockDecode.ByteAt(sc, 2 * c + 1)), acc);
                acc = Fma(Sum32(xhi), Vector256.Create(-dmin * BlockDecode.ByteAt(mn, 2 * c + 1)), acc);
            }
        }
        return Vector256.Sum(acc);
    }

    private static float Q8_K(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var acc = Vector256<float>.Zero;
        int nb = x.Length / 256;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * BlockLayout.Q8_K.Bytes, BlockLayout.Q8_K.Bytes);
            float d = BinaryPrimitives.ReadSingleLittleEndian(b.Slice(BlockLayout.Q8_K.D, sizeof(float)));
            var blockAcc = Vector256<float>.Zero;
            for (int j = 0; j < 8; j++)
                blockAcc += Dot32(MemoryMarshal.Read<Vector256<sbyte>>(b.Slice(BlockLayout.Q8_K.Qs + 32 * j, 32)), x.Slice(BlockLayout.QK_K * i + 32 * j, 32));
            acc = Fma(blockAcc, Vector256.Create(d), acc);
        }
        return Vector256.Sum(acc);
    }
}
