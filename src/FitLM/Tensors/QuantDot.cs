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
public static class QuantDot
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

    /// <summary>
    /// Byte b of the table entry for v is bit b of v (0 or 1): four lookups spread a 32-bit mask of
    /// 5th bits (q5_0/q5_1 qh) over 32 bytes in element order.
    /// </summary>
    private static readonly ulong[] BitsToBytes = BuildBitsToBytes();

    private static ulong[] BuildBitsToBytes()
    {
        var t = new ulong[256];
        for (int v = 0; v < 256; v++)
            for (int b = 0; b < 8; b++)
                if ((v & (1 << b)) != 0) t[v] |= 1UL << (8 * b);
        return t;
    }

    /// <summary>The 5th bits of a q5_0/q5_1 block (u32 qh, bit j for element j) as 32 bytes of 0 or 16.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> FifthBits(ReadOnlySpan<byte> qh)
    {
        var t = BitsToBytes;
        return Vector256.ShiftLeft(Vector256.Create(t[qh[0]], t[qh[1]], t[qh[2]], t[qh[3]]).AsByte(), 4);
    }

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
            var b = row.Slice(i * 34, 34);
            float d = Dequantize.Half(b, 0);
            var q = MemoryMarshal.Read<Vector256<sbyte>>(b.Slice(2, 32));
            acc = Fma(Dot32(q, x.Slice(i * 32, 32)), Vector256.Create(d), acc);
        }
        return Vector256.Sum(acc);
    }

    private static float Q4_0(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var acc = Vector256<float>.Zero;
        var mask = Vector128.Create((byte)0xF);
        var eight = Vector256.Create((sbyte)8);
        int nb = x.Length / 32;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * 18, 18);
            float d = Dequantize.Half(b, 0);
            var raw = MemoryMarshal.Read<Vector128<byte>>(b.Slice(2, 16));
            // Elements 0..15 are the low nibbles, 16..31 the high nibbles; both offset by 8.
            var q = Vector256.Create(raw & mask, Vector128.ShiftRightLogical(raw, 4)).AsSByte() - eight;
            acc = Fma(Dot32(q, x.Slice(i * 32, 32)), Vector256.Create(d), acc);
        }
        return Vector256.Sum(acc);
    }

    private static float Q4_K(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var acc = Vector256<float>.Zero;
        var mask = Vector256.Create((byte)0xF);
        int nb = x.Length / 256;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * 144, 144);
            float d = Dequantize.Half(b, 0), dmin = Dequantize.Half(b, 2);
            var scales = b.Slice(4, 12);
            var qs = b.Slice(16, 128);
            var xb = x.Slice(i * 256, 256);
            for (int c = 0; c < 4; c++)
            {
                Dequantize.ScaleMinK4(scales, 2 * c, out int sc1, out int m1);
                Dequantize.ScaleMinK4(scales, 2 * c + 1, out int sc2, out int m2);
                var raw = MemoryMarshal.Read<Vector256<byte>>(qs.Slice(32 * c, 32));
                var xlo = xb.Slice(64 * c, 32);
                var xhi = xb.Slice(64 * c + 32, 32);
                // Σ (d*sc*q - dmin*m) x = d*sc Σ q x - dmin*m Σ x
                acc = Fma(Dot32(raw & mask, xlo), Vector256.Create(d * sc1), acc);
                acc = Fma(Sum32(xlo), Vector256.Create(-dmin * m1), acc);
                acc = Fma(Dot32(Vector256.ShiftRightLogical(raw, 4), xhi), Vector256.Create(d * sc2), acc);
                acc = Fma(Sum32(xhi), Vector256.Create(-dmin * m2), acc);
            }
        }
        return Vector256.Sum(acc);
    }

    private static float Q6_K(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var acc = Vector256<float>.Zero;
        var m4 = Vector256.Create((byte)0xF);
        var m2 = Vector256.Create((byte)3);
        var off = Vector256.Create((sbyte)32);
        int nb = x.Length / 256;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * 210, 210);
            var sc = MemoryMarshal.Cast<byte, sbyte>(b.Slice(192, 16));
            float d = Dequantize.Half(b, 208);
            for (int h = 0; h < 2; h++)
            {
                var l0 = MemoryMarshal.Read<Vector256<byte>>(b.Slice(64 * h, 32));
                var l1 = MemoryMarshal.Read<Vector256<byte>>(b.Slice(64 * h + 32, 32));
                var hb = MemoryMarshal.Read<Vector256<byte>>(b.Slice(128 + 32 * h, 32));
                var xh = x.Slice(256 * i + 128 * h, 128);
                for (int k = 0; k < 4; k++)
                {
                    // Plane k holds elements 32k..32k+31 of this half: low bits from a nibble of ql,
                    // bits 4-5 from bits 2k..2k+1 of qh.
                    var low = k switch { 0 => l0 & m4, 1 => l1 & m4, 2 => Vector256.ShiftRightLogical(l0, 4), _ => Vector256.ShiftRightLogical(l1, 4) };
                    var high = Vector256.ShiftRightLogical(hb, 2 * k) & m2;
                    var q = (low | Vector256.ShiftLeft(high, 4)).AsSByte() - off;
                    Widen(q, out var f0, out var f1, out var f2, out var f3);
                    var xv = MemoryMarshal.Cast<float, Vector256<float>>(xh.Slice(32 * k, 32));
                    var s0 = Fma(f1, xv[1], f0 * xv[0]);
                    var s1 = Fma(f3, xv[3], f2 * xv[2]);
                    acc = Fma(s0, Vector256.Create(d * sc[8 * h + 2 * k]), acc);
                    acc = Fma(s1, Vector256.Create(d * sc[8 * h + 2 * k + 1]), acc);
                }
            }
        }
        return Vector256.Sum(acc);
    }

    private static float Q4_1(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var acc = Vector256<float>.Zero;
        var mask = Vector128.Create((byte)0xF);
        int nb = x.Length / 32;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * 20, 20);
            float d = Dequantize.Half(b, 0), m = Dequantize.Half(b, 2);
            var raw = MemoryMarshal.Read<Vector128<byte>>(b.Slice(4, 16));
            var q = Vector256.Create(raw & mask, Vector128.ShiftRightLogical(raw, 4));
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
        var mask = Vector128.Create((byte)0xF);
        var sixteen = Vector256.Create((sbyte)16);
        int nb = x.Length / 32;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * 22, 22);
            float d = Dequantize.Half(b, 0);
            var raw = MemoryMarshal.Read<Vector128<byte>>(b.Slice(6, 16));
            var q = Vector256.Create(raw & mask, Vector128.ShiftRightLogical(raw, 4)) | FifthBits(b.Slice(2, 4));
            acc = Fma(Dot32(q.AsSByte() - sixteen, x.Slice(i * 32, 32)), Vector256.Create(d), acc);
        }
        return Vector256.Sum(acc);
    }

    private static float Q5_1(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var acc = Vector256<float>.Zero;
        var mask = Vector128.Create((byte)0xF);
        int nb = x.Length / 32;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * 24, 24);
            float d = Dequantize.Half(b, 0), m = Dequantize.Half(b, 2);
            var raw = MemoryMarshal.Read<Vector128<byte>>(b.Slice(8, 16));
            var q = Vector256.Create(raw & mask, Vector128.ShiftRightLogical(raw, 4)) | FifthBits(b.Slice(4, 4));
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
            var b = row.Slice(i * 36, 36);
            float d = Dequantize.Half(b, 0);
            var q = MemoryMarshal.Read<Vector256<sbyte>>(b.Slice(4, 32));
            acc = Fma(Dot32(q, x.Slice(i * 32, 32)), Vector256.Create(d), acc);
        }
        return Vector256.Sum(acc);
    }

    private static float Q2_K(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var acc = Vector256<float>.Zero;
        var m2 = Vector256.Create((byte)3);
        int nb = x.Length / 256;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * 84, 84);
            var scales = b[..16];
            float d = Dequantize.Half(b, 80), dmin = Dequantize.Half(b, 82);
            for (int h = 0; h < 2; h++)
            {
                var raw = MemoryMarshal.Read<Vector256<byte>>(b.Slice(16 + 32 * h, 32));
                for (int k = 0; k < 4; k++)
                {
                    // Plane k: elements 128h + 32k + (0..31), sub-blocks s (first 16) and s + 1.
                    var q = Vector256.ShiftRightLogical(raw, 2 * k) & m2;
                    Widen(q, out var f0, out var f1, out var f2, out var f3);
                    var xv = MemoryMarshal.Cast<float, Vector256<float>>(x.Slice(256 * i + 128 * h + 32 * k, 32));
                    int s = 8 * h + 2 * k;
                    int sc0 = scales[s], sc1 = scales[s + 1];
                    acc = Fma(Fma(f1, xv[1], f0 * xv[0]), Vector256.Create(d * (sc0 & 0xF)), acc);
                    acc = Fma(xv[0] + xv[1], Vector256.Create(-dmin * (sc0 >> 4)), acc);
                    acc = Fma(Fma(f3, xv[3], f2 * xv[2]), Vector256.Create(d * (sc1 & 0xF)), acc);
                    acc = Fma(xv[2] + xv[3], Vector256.Create(-dmin * (sc1 >> 4)), acc);
                }
            }
        }
        return Vector256.Sum(acc);
    }

    private static float Q3_K(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var acc = Vector256<float>.Zero;
        var m2 = Vector256.Create((byte)3);
        var one = Vector256.Create((byte)1);
        var four = Vector256.Create((sbyte)4);
        int nb = x.Length / 256;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * 110, 110);
            var hm = MemoryMarshal.Read<Vector256<byte>>(b[..32]);
            var scales = b.Slice(96, 12);
            float d = Dequantize.Half(b, 108);
            for (int h = 0; h < 2; h++)
            {
                var raw = MemoryMarshal.Read<Vector256<byte>>(b.Slice(32 + 32 * h, 32));
                for (int k = 0; k < 4; k++)
                {
                    // Plane k of half h: low 2 bits from qs, bit 2 from bit (4h + k) of hmask; q = that - 4.
                    var low = Vector256.ShiftRightLogical(raw, 2 * k) & m2;
                    var high = Vector256.ShiftRightLogical(hm, 4 * h + k) & one;
                    var q = (low | Vector256.ShiftLeft(high, 2)).AsSByte() - four;
                    Widen(q, out var f0, out var f1, out var f2, out var f3);
                    var xv = MemoryMarshal.Cast<float, Vector256<float>>(x.Slice(256 * i + 128 * h + 32 * k, 32));
                    int s = 8 * h + 2 * k;
                    acc = Fma(Fma(f1, xv[1], f0 * xv[0]), Vector256.Create(d * (Dequantize.Q3_KScale(scales, s) - 32)), acc);
                    acc = Fma(Fma(f3, xv[3], f2 * xv[2]), Vector256.Create(d * (Dequantize.Q3_KScale(scales, s + 1) - 32)), acc);
                }
            }
        }
        return Vector256.Sum(acc);
    }

    private static float Q5_K(ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        var acc = Vector256<float>.Zero;
        var mask = Vector256.Create((byte)0xF);
        var one = Vector256.Create((byte)1);
        int nb = x.Length / 256;
        for (int i = 0; i < nb; i++)
        {
            var b = row.Slice(i * 176, 176);
            float d = Dequantize.Half(b, 0), dmin = Dequantize.Half(b, 2);
            var scales = b.Slice(4, 12);
            var qh = MemoryMarshal.Read<Vector256<byte>>(b.Slice(16, 32));
            var qs = b.Slice(48, 128);
            var xb = x.Slice(i * 256, 256);
            for (int c = 0; c < 4; c++)
            {
                Dequantize.ScaleMinK4(scales, 2 * c, out int sc1, out int m1);
                Dequantize.ScaleMinK4(scales, 2 * c + 1, out int sc2, out int m2);
                var raw = MemoryMarshal.Read<Vector256<byte>>(qs.Slice(32 * c, 32));
                var lo = (raw & mask) | Vector256.ShiftLeft(Vector256.ShiftRightLogical(qh, 2 * c) & one, 4);
                var hi = Vector256.ShiftRightLogical(raw, 4) | Vector256.ShiftLeft(Vector256.ShiftRightLogical(qh, 2 * c + 1) & one, 4);
                var xlo = xb.Slice(64 * c, 32);
                var xhi = xb.Slice(64 * c + 32, 32);
                acc = Fma(Dot32(lo, xlo), Vector256.Create(d * sc1), acc);
                acc = Fma(Sum32(xlo), Vector256.Create(-dmin * m1), acc);
                acc = Fma(Dot32(hi, xhi), Vector256.Create(d * sc2), acc);
                acc = Fma(Sum32(xhi), Vector256.Create(-dmin * m2), acc);
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
            var b = row.Slice(i * 292, 292);
            float d = BinaryPrimitives.ReadSingleLittleEndian(b[..4]);
            var blockAcc = Vector256<float>.Zero;
            for (int j = 0; j < 8; j++)
                blockAcc += Dot32(MemoryMarshal.Read<Vector256<sbyte>>(b.Slice(4 + 32 * j, 32)), x.Slice(256 * i + 32 * j, 32));
            acc = Fma(blockAcc, Vector256.Create(d), acc);
        }
        return Vector256.Sum(acc);
    }
}
