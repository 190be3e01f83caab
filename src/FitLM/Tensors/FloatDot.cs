using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace FitLM.Tensors;

/// <summary>
/// Dot products of F32 / F16 / BF16 weight rows with float activations (no activation quantization: BF16
/// logits must match the reference model tightly), and the 16-bit → float row conversions the batched path
/// uses. Decode streams the weights once, so these run near memory bandwidth only if the conversion is a few
/// instructions per 16 elements: .NET 10 exposes no F16C/vcvtph2ps, so fp16 is widened with integer ops (see
/// <see cref="F16x16"/>) and bf16 is a 16-bit shift. Each path has the scalar reference it is tested against.
/// The F16 tests cover every finite half, zeros and subnormals included.
/// </summary>
internal static unsafe class FloatDot
{
    public enum Isa { Scalar, Vector256, Vector512 }

    public static Isa Best { get; } = IsSupported(Isa.Vector512) ? Isa.Vector512 : IsSupported(Isa.Vector256) ? Isa.Vector256 : Isa.Scalar;

    public static bool IsSupported(Isa isa) => isa switch
    {
        Isa.Scalar => true,
        Isa.Vector256 => Avx2.IsSupported && Fma.IsSupported,
        Isa.Vector512 => Vector512.IsHardwareAccelerated && Avx512F.IsSupported && Avx512BW.IsSupported,
        _ => false,
    };

    public static bool Supports(GgmlType type) => type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16;

    /// <summary>
    /// y[r] = dot(W[r], x) for r in [0, rows), W[r] at w + r·rowBytes. With <paramref name="generated"/> (the default)
    /// F16 on Vector512 runs the kernel generated at load when there is one (Jit/GeneratedKernels.cs: vcvtph2ps, the
    /// same sums bit for bit); false forces the managed kernel (tests).
    /// </summary>
    internal static delegate*<byte*, long, int, float*, int, float*, void> Kernel(GgmlType type, Isa isa, bool generated = true)
    {
        if (!IsSupported(isa)) throw new PlatformNotSupportedException($"{isa} is not supported on this machine");
        return (type, isa) switch
        {
            (GgmlType.F16, Isa.Vector512) when generated && Jit.GeneratedKernels.IsAvailable => &Jit.GeneratedKernels.F16Rows,
            (GgmlType.F32, Isa.Vector512) => &Rows<F32K, V512>,
            (GgmlType.F32, Isa.Vector256) => &Rows<F32K, V256>,
            (GgmlType.F32, _) => &Rows<F32K, Sc>,
            (GgmlType.F16, Isa.Vector512) => &Rows<F16K, V512>,
            (GgmlType.F16, Isa.Vector256) => &Rows<F16K, V256>,
            (GgmlType.F16, _) => &Rows<F16K, Sc>,
            (GgmlType.BF16, Isa.Vector512) => &Rows<BF16K, V512>,
            (GgmlType.BF16, Isa.Vector256) => &Rows<BF16K, V256>,
            (GgmlType.BF16, _) => &Rows<BF16K, Sc>,
            _ => throw new FitLMException($"no float dot kernel for {type}"),
        };
    }

    /// <summary>
    /// y[t·yStride + r] = dot(W[r], x[t·cols ..]) for rows r in [0, rows) and tokens t in [0, n): several tokens'
    /// products with one chunk of rows (batched decode). Each token's sum is the one <see cref="Kernel"/> computes
    /// alone, bit for bit: the 16-bit → float conversion is exact whichever way it runs, and every token keeps the
    /// one-row kernel's accumulators and order. What changes is the work per token: a row is converted once for all
    /// tokens, and with Vector512 four tokens share each load of it (the fp16 widening alone costs more than the
    /// multiply-adds, and the server decodes the same rows for every sequence in the batch).
    /// </summary>
    internal static void MultiRows(GgmlType type, Isa isa, byte* w, long rowBytes, int rows, float* x, int cols, int n, float* y, long yStride)
    {
        if (!IsSupported(isa)) throw new PlatformNotSupportedException($"{isa} is not supported on this machine");
        var one = Kernel(GgmlType.F32, isa);
        float* row = type == GgmlType.F32 ? null : RowBuffer(cols);
        for (int r = 0; r < rows; r++)
        {
            byte* src = w + r * rowBytes;
            // The next row is fetched while this one is multiplied with every token (the hardware prefetcher alone
            // falls behind when each row is followed by this much work).
            if (r + 1 < rows) IntDot.PrefetchAhead(src, rowBytes, IntDot.MultiPrefetchDistance(rowBytes));
            float* a = type == GgmlType.F32 ? (float*)src : row;
            if (type != GgmlType.F32) ToFloat(type, src, row, cols, isa);
            int t = 0;
            if (isa == Isa.Vector512)
                for (; t + 4 <= n; t += 4)
                    F32Dot4x512(a, x + (long)t * cols, cols, y + t * yStride + r, yStride);
            for (; t < n; t++) one((byte*)a, 0, 1, x + (long)t * cols, cols, y + t * yStride + r);
        }
    }

    [ThreadStatic] private static float* t_row;
    [ThreadStatic] private static int t_rowLength;

    /// <summary>This thread's buffer of one converted row (64-byte aligned, grown as needed, kept for the thread's life).</summary>
    private static float* RowBuffer(int cols)
    {
        if (t_rowLength < cols)
        {
            if (t_row != null) System.Runtime.InteropServices.NativeMemory.AlignedFree(t_row);
            t_row = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)cols * sizeof(float), 64);
            t_rowLength = cols;
        }
        return t_row;
    }

    /// <summary>
    /// <see cref="F32K"/>'s Vector512 dot for four tokens x, x + n, x + 2n, x + 3n against one row a, with each
    /// token's accumulators, loop order and final sums exactly as the one-token kernel has them.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void F32Dot4x512(float* a, float* x, int n, float* y, long yStride)
    {
        float* x0 = x, x1 = x + n, x2 = x + 2 * n, x3 = x + 3 * n;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default;
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default;
        Vector512<float> d0 = default, d1 = default, d2 = default, d3 = default;
        int i = 0;
        for (; i + 64 <= n; i += 64)
        {
            var w = Vector512.Load(a + i);
            a0 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x0 + i), a0);
            b0 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x1 + i), b0);
            c0 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x2 + i), c0);
            d0 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x3 + i), d0);
            w = Vector512.Load(a + i + 16);
            a1 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x0 + i + 16), a1);
            b1 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x1 + i + 16), b1);
            c1 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x2 + i + 16), c1);
            d1 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x3 + i + 16), d1);
            w = Vector512.Load(a + i + 32);
            a2 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x0 + i + 32), a2);
            b2 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x1 + i + 32), b2);
            c2 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x2 + i + 32), c2);
            d2 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x3 + i + 32), d2);
            w = Vector512.Load(a + i + 48);
            a3 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x0 + i + 48), a3);
            b3 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x1 + i + 48), b3);
            c3 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x2 + i + 48), c3);
            d3 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x3 + i + 48), d3);
        }
        for (; i + 16 <= n; i += 16)
        {
            var w = Vector512.Load(a + i);
            a0 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x0 + i), a0);
            b0 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x1 + i), b0);
            c0 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x2 + i), c0);
            d0 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x3 + i), d0);
        }
        float sa = Vector512.Sum((a0 + a1) + (a2 + a3)), sb = Vector512.Sum((b0 + b1) + (b2 + b3));
        float sc = Vector512.Sum((c0 + c1) + (c2 + c3)), sd = Vector512.Sum((d0 + d1) + (d2 + d3));
        for (; i < n; i++)
        {
            sa += a[i] * x0[i];
            sb += a[i] * x1[i];
            sc += a[i] * x2[i];
            sd += a[i] * x3[i];
        }
        y[0] = sa; y[yStride] = sb; y[2 * yStride] = sc; y[3 * yStride] = sd;
    }

    /// <summary>The dot product of one row with x (tests and tools).</summary>
    public static float Dot(GgmlType type, byte* row, float* x, int n, Isa isa, bool generated = true)
    {
        float y;
        Kernel(type, isa, generated)(row, 0, 1, x, n, &y);
        return y;
    }

    /// <summary>Converts n elements of an F32/F16/BF16 row to float (F16 on Vector512: generated code, unless <paramref name="generated"/> is false).</summary>
    public static void ToFloat(GgmlType type, byte* src, float* dst, int n, Isa isa, bool generated = true)
    {
        switch (type)
        {
            case GgmlType.F32:
                Buffer.MemoryCopy(src, dst, (long)n * 4, (long)n * 4);
                return;
            case GgmlType.F16:
            {
                if (isa == Isa.Vector512 && generated && Jit.GeneratedKernels.IsAvailable)
                {
                    Jit.GeneratedKernels.F16ToFloat(src, dst, n);
                    return;
                }
                short* h = (short*)src;
                int i = 0;
                if (isa == Isa.Vector512)
                    for (; i + 16 <= n; i += 16) F16x16(h + i).Store(dst + i);
                else if (isa == Isa.Vector256)
                    for (; i + 8 <= n; i += 8) F16x8(h + i).Store(dst + i);
                for (; i < n; i++) dst[i] = IntDot.F16[(ushort)h[i]];
                return;
            }
            case GgmlType.BF16:
            {
                ushort* h = (ushort*)src;
                int i = 0;
                if (isa == Isa.Vector512)
                    for (; i + 16 <= n; i += 16) BF16x16(h + i).Store(dst + i);
                else if (isa == Isa.Vector256)
                    for (; i + 8 <= n; i += 8) BF16x8(h + i).Store(dst + i);
                for (; i < n; i++) ((uint*)dst)[i] = (uint)h[i] << 16;
                return;
            }
            default:
                throw new FitLMException($"{type} is not a float type");
        }
    }

    // ---------------------------------------------------------------- conversions

    /// <summary>
    /// 16 fp16 → float, exactly. Sign-extended and shifted left 13, a half's exponent and mantissa sit in a
    /// float's positions and its sign in bit 31 (bits 30..28 get sign copies, masked off); adding 112 to the
    /// exponent field rebiases 15 → 127. Integer operations only: on this CPU a float operation on a denormal
    /// input costs a ~150-cycle microcode assist, which the classic "×2^112" conversion hits on every small
    /// weight. Halves with a zero exponent field (zeros and subnormals, a fraction of a percent of weights)
    /// take <see cref="F16Fix"/>. Inf/NaN halves (never in weights) come out as large finite values.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> F16x16(short* p)
    {
        var e = Avx512F.ConvertToVector512Int32(Vector256.Load(p)) << 13;
        var t = e & Vector512.Create(unchecked((int)0x8FFFE000));
        var r = t + Vector512.Create(0x38000000);
        if (Vector512.EqualsAny(e & Vector512.Create(0x0F800000), Vector512<int>.Zero)) r = F16Fix(t, r);
        return r.AsSingle();
    }

    /// <summary>
    /// Zero-exponent halves: ±(asfloat(0x38800000 + mantissa) - 2^-14), i.e. 2^-14·(1 + m/1024) - 2^-14 =
    /// m·2^-24 exactly (and ±0 for zeros), computed on normal floats. Inlined: a call inside the dot loop
    /// would make the JIT keep the accumulators on the stack (no callee-saved vector registers).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> F16Fix(Vector512<int> t, Vector512<int> r)
    {
        var mag = t & Vector512.Create(0x0FFFE000);
        var f = ((mag + Vector512.Create(0x38800000)).AsSingle() - Vector512.Create(6.103515625e-05f)).AsInt32()
            | (t & Vector512.Create(unchecked((int)0x80000000)));
        return Vector512.ConditionalSelect(Vector512.Equals(t & Vector512.Create(0x0F800000), Vector512<int>.Zero), f, r);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> F16x8(short* p)
    {
        var e = Avx2.ConvertToVector256Int32(Vector128.Load(p)) << 13;
        var t = e & Vector256.Create(unchecked((int)0x8FFFE000));
        var r = t + Vector256.Create(0x38000000);
        if (Vector256.EqualsAny(e & Vector256.Create(0x0F800000), Vector256<int>.Zero)) r = F16Fix(t, r);
        return r.AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> F16Fix(Vector256<int> t, Vector256<int> r)
    {
        var mag = t & Vector256.Create(0x0FFFE000);
        var f = ((mag + Vector256.Create(0x38800000)).AsSingle() - Vector256.Create(6.103515625e-05f)).AsInt32()
            | (t & Vector256.Create(unchecked((int)0x80000000)));
        return Vector256.ConditionalSelect(Vector256.Equals(t & Vector256.Create(0x0F800000), Vector256<int>.Zero), f, r);
    }

    /// <summary>16 bf16 → float: the upper half of a float32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> BF16x16(ushort* p) => (Avx512F.ConvertToVector512UInt32(Vector256.Load(p)) << 16).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> BF16x8(ushort* p) => (Avx2.ConvertToVector256Int32(Vector128.Load(p)) << 16).AsSingle();

    // ---------------------------------------------------------------- kernels

    private interface IPath { static abstract int Width { get; } }
    private struct Sc : IPath { public static int Width => 0; }
    private struct V256 : IPath { public static int Width => 256; }
    private struct V512 : IPath { public static int Width => 512; }

    private interface IRow { static abstract float Dot<TP>(byte* w, float* x, int n) where TP : struct, IPath; }

    /// <summary>
    /// Software prefetch distance for the float rows (0: none, the default). Float rows are long sequential streams
    /// the hardware prefetcher follows; measured on the 2-core AMD EPYC (Zen 4) CI-like machine, F16 decode ran at
    /// 23 GB/s without software prefetch and 17 GB/s with IntDot's 2 KiB. FITLM_PREFETCH_BYTES_FLOAT overrides it (read by <see cref="CpuOptions"/>).
    /// </summary>
    internal static readonly int PrefetchBytes = CpuOptions.Default.FloatPrefetchBytes;

    private static long PrefetchDistance(long rowBytes) =>
        PrefetchBytes == 0 || rowBytes <= 0 || !Sse.IsSupported ? 0 : (PrefetchBytes + rowBytes - 1) / rowBytes * rowBytes;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Rows<TK, TP>(byte* w, long rowBytes, int rows, float* x, int n, float* y) where TK : struct, IRow where TP : struct, IPath
    {
        long ahead = TP.Width != 0 && rows > 1 ? PrefetchDistance(rowBytes) : 0;
        for (int r = 0; r < rows; r++)
        {
            IntDot.PrefetchAhead(w + r * rowBytes, rowBytes, ahead);
            y[r] = TK.Dot<TP>(w + r * rowBytes, x, n);
        }
    }

    private struct F32K : IRow
    {
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public static float Dot<TP>(byte* w, float* x, int n) where TP : struct, IPath
        {
            float* a = (float*)w;
            int i = 0;
            float s = 0;
            if (TP.Width == 512)
            {
                Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default;
                for (; i + 64 <= n; i += 64)
                {
                    s0 = Avx512F.FusedMultiplyAdd(Vector512.Load(a + i), Vector512.Load(x + i), s0);
                    s1 = Avx512F.FusedMultiplyAdd(Vector512.Load(a + i + 16), Vector512.Load(x + i + 16), s1);
                    s2 = Avx512F.FusedMultiplyAdd(Vector512.Load(a + i + 32), Vector512.Load(x + i + 32), s2);
                    s3 = Avx512F.FusedMultiplyAdd(Vector512.Load(a + i + 48), Vector512.Load(x + i + 48), s3);
                }
                for (; i + 16 <= n; i += 16) s0 = Avx512F.FusedMultiplyAdd(Vector512.Load(a + i), Vector512.Load(x + i), s0);
                s = Vector512.Sum((s0 + s1) + (s2 + s3));
            }
            else if (TP.Width == 256)
            {
                Vector256<float> s0 = default, s1 = default, s2 = default, s3 = default;
                for (; i + 32 <= n; i += 32)
                {
                    s0 = Fma.MultiplyAdd(Vector256.Load(a + i), Vector256.Load(x + i), s0);
                    s1 = Fma.MultiplyAdd(Vector256.Load(a + i + 8), Vector256.Load(x + i + 8), s1);
                    s2 = Fma.MultiplyAdd(Vector256.Load(a + i + 16), Vector256.Load(x + i + 16), s2);
                    s3 = Fma.MultiplyAdd(Vector256.Load(a + i + 24), Vector256.Load(x + i + 24), s3);
                }
                for (; i + 8 <= n; i += 8) s0 = Fma.MultiplyAdd(Vector256.Load(a + i), Vector256.Load(x + i), s0);
                s = Vector256.Sum((s0 + s1) + (s2 + s3));
            }
            for (; i < n; i++) s += a[i] * x[i];
            return s;
        }
    }

    private struct F16K : IRow
    {
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public static float Dot<TP>(byte* w, float* x, int n) where TP : struct, IPath
        {
            short* h = (short*)w;
            int i = 0;
            float s = 0;
            if (TP.Width == 512)
            {
                Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default;
                for (; i + 64 <= n; i += 64)
                {
                    s0 = Avx512F.FusedMultiplyAdd(F16x16(h + i), Vector512.Load(x + i), s0);
                    s1 = Avx512F.FusedMultiplyAdd(F16x16(h + i + 16), Vector512.Load(x + i + 16), s1);
                    s2 = Avx512F.FusedMultiplyAdd(F16x16(h + i + 32), Vector512.Load(x + i + 32), s2);
                    s3 = Avx512F.FusedMultiplyAdd(F16x16(h + i + 48), Vector512.Load(x + i + 48), s3);
                }
                for (; i + 16 <= n; i += 16) s0 = Avx512F.FusedMultiplyAdd(F16x16(h + i), Vector512.Load(x + i), s0);
                s = Vector512.Sum((s0 + s1) + (s2 + s3));
            }
            else if (TP.Width == 256)
            {
                Vector256<float> s0 = default, s1 = default, s2 = default, s3 = default;
                for (; i + 32 <= n; i += 32)
                {
                    s0 = Fma.MultiplyAdd(F16x8(h + i), Vector256.Load(x + i), s0);
                    s1 = Fma.MultiplyAdd(F16x8(h + i + 8), Vector256.Load(x + i + 8), s1);
                    s2 = Fma.MultiplyAdd(F16x8(h + i + 16), Vector256.Load(x + i + 16), s2);
                    s3 = Fma.MultiplyAdd(F16x8(h + i + 24), Vector256.Load(x + i + 24), s3);
                }
                for (; i + 8 <= n; i += 8) s0 = Fma.MultiplyAdd(F16x8(h + i), Vector256.Load(x + i), s0);
                s = Vector256.Sum((s0 + s1) + (s2 + s3));
            }
            for (; i < n; i++) s += IntDot.F16[(ushort)h[i]] * x[i];
            return s;
        }
    }

    private struct BF16K : IRow
    {
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public static float Dot<TP>(byte* w, float* x, int n) where TP : struct, IPath
        {
            ushort* h = (ushort*)w;
            int i = 0;
            float s = 0;
            if (TP.Width == 512)
            {
                Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default;
                for (; i + 64 <= n; i += 64)
                {
                    s0 = Avx512F.FusedMultiplyAdd(BF16x16(h + i), Vector512.Load(x + i), s0);
                    s1 = Avx512F.FusedMultiplyAdd(BF16x16(h + i + 16), Vector512.Load(x + i + 16), s1);
                    s2 = Avx512F.FusedMultiplyAdd(BF16x16(h + i + 32), Vector512.Load(x + i + 32), s2);
                    s3 = Avx512F.FusedMultiplyAdd(BF16x16(h + i + 48), Vector512.Load(x + i + 48), s3);
                }
                for (; i + 16 <= n; i += 16) s0 = Avx512F.FusedMultiplyAdd(BF16x16(h + i), Vector512.Load(x + i), s0);
                s = Vector512.Sum((s0 + s1) + (s2 + s3));
            }
            else if (TP.Width == 256)
            {
                Vector256<float> s0 = default, s1 = default, s2 = default, s3 = default;
                for (; i + 32 <= n; i += 32)
                {
                    s0 = Fma.MultiplyAdd(BF16x8(h + i), Vector256.Load(x + i), s0);
                    s1 = Fma.MultiplyAdd(BF16x8(h + i + 8), Vector256.Load(x + i + 8), s1);
                    s2 = Fma.MultiplyAdd(BF16x8(h + i + 16), Vector256.Load(x + i + 16), s2);
                    s3 = Fma.MultiplyAdd(BF16x8(h + i + 24), Vector256.Load(x + i + 24), s3);
                }
                for (; i + 8 <= n; i += 8) s0 = Fma.MultiplyAdd(BF16x8(h + i), Vector256.Load(x + i), s0);
                s = Vector256.Sum((s0 + s1) + (s2 + s3));
            }
            for (; i < n; i++) s += BitConverter.UInt32BitsToSingle((uint)h[i] << 16) * x[i];
            return s;
        }
    }
}
