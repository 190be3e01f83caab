using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace FitLM.Tensors;

/// <summary>
/// <see cref="IntGemm"/>'s 4-row × 16-token tile for q8_0 and q4_0 weights read in their file layout, with no
/// weight packing: the tile broadcasts each row's next 4 quants as one dword straight from its block (q8_0: the sign
/// bit flipped, u = q + 128; q4_0: the low nibbles of 4 bytes are quants k..k+3, the high ones k+16..k+19, so one
/// dword feeds two quads), and reads each block's fp16 scale where it lies. The integer sums are exact and the float
/// steps are the packed tile's, so the results are the packed path's bit for bit (tested). Needs AVX-VNNI.
/// <para>
/// Packing decodes every weight into bytes and interleaves rows once per call, which a short batch cannot amortize;
/// the packed tile itself is faster (no unpacking or sign flips in its inner loop). Measured on 5632×2048 matrices,
/// one thread (Xeon, AVX-VNNI), in ms: q4_0 ×16 tokens pack 1.53 + tile 1.72 against direct 2.08, ×128 tokens
/// 1.65 + 15.98 against 20.90; q8_0 ×16 1.52 + 1.74 against 2.25, ×128 1.56 + 14.92 against 23.49. So batches of
/// fewer than <see cref="MaxTokens"/> tokens (short prompts, chat turns) read the weights in place.
/// </para>
/// </summary>
internal static unsafe class IntGemmDirect
{
    /// <summary>Batches below this many tokens take the direct tile (the crossover measured above lies between 16 and 128).</summary>
    public const int MaxTokens = 48;

    public static bool Supports(GgmlType type, IntDot.Isa isa, int tokens) =>
        tokens < MaxTokens && isa == IntDot.Isa.AvxVnni && type is GgmlType.Q8_0 or GgmlType.Q4_0;

    /// <summary>
    /// Y[t·yStride + r] for rows r in [0, rows) (row r at w + r·rowBytes) and tokens t in [0, n) of <paramref name="pa"/>
    /// from token group <paramref name="g0"/>, as <see cref="IntGemm.Tile"/> computes them from packed weights.
    /// </summary>
    public static void Tile(GgmlType type, byte* w, long rowBytes, int rows, IntGemm.PackedActivations pa, int g0, int n, float* y, long yStride)
    {
        int nb = pa.Cols / BlockLayout.QK;
        for (int r0 = 0; r0 < rows; r0 += IntGemm.R)
        {
            int nr = Math.Min(IntGemm.R, rows - r0);
            // Missing rows of the last group repeat the first (computed, never stored).
            byte* w0 = w + r0 * rowBytes;
            byte* w1 = nr > 1 ? w0 + rowBytes : w0, w2 = nr > 2 ? w0 + 2 * rowBytes : w0, w3 = nr > 3 ? w0 + 3 * rowBytes : w0;
            for (int t = 0; t < n; t += 2 * IntGemm.G)
            {
                int g = g0 + t / IntGemm.G, nt = Math.Min(2 * IntGemm.G, n - t);
                var a0 = new IntGemm.Act(pa, g);
                var a1 = nt > IntGemm.G ? new IntGemm.Act(pa, g + 1) : a0;
                float* yt = y + t * yStride + r0;
                if (type == GgmlType.Q8_0) Kernel<Q8>(w0, w1, w2, w3, a0, a1, nb, yt, yStride, nr, nt);
                else Kernel<Q4>(w0, w1, w2, w3, a0, a1, nb, yt, yStride, nr, nt);
            }
        }
    }

    private interface IBlock
    {
        static abstract int Bytes { get; }
        static abstract bool Nibbles { get; }
    }

    private struct Q8 : IBlock { public static int Bytes => BlockLayout.Q8_0.Bytes; public static bool Nibbles => false; }
    private struct Q4 : IBlock { public static int Bytes => BlockLayout.Q4_0.Bytes; public static bool Nibbles => true; }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> Bcast(byte* p) => Vector256.Create(*(int*)p).AsByte();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Dp(Vector256<int> acc, Vector256<byte> u, Vector256<sbyte> a) => AvxVnni.MultiplyWideningAndAdd(acc, u, a);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel<TB>(byte* w0, byte* w1, byte* w2, byte* w3, IntGemm.Act a0, IntGemm.Act a1, int nb,
        float* y, long ys, int nr, int nt) where TB : struct, IBlock
    {
        Vector256<float> f00 = default, f01 = default, f10 = default, f11 = default;
        Vector256<float> f20 = default, f21 = default, f30 = default, f31 = default;
        float* f16 = IntDot.F16;
        var low = Vector256.Create((byte)0x0F);
        var flip = Vector256.Create((byte)0x80);
        const int G = IntGemm.G, Qs = 2;   // both block types: fp16 d, then the quants
        for (int b = 0; b < nb; b++)
        {
            var c0 = Vector256.Load(a0.C + b * G);
            var c1 = Vector256.Load(a1.C + b * G);
            // The nibbles are q + 8, not q + 128: -8·Σa = (-128·Σa) / 16, exact.
            if (TB.Nibbles) { c0 >>= 4; c1 >>= 4; }
            sbyte* q0 = a0.Q + (long)b * 32 * G, q1 = a1.Q + (long)b * 32 * G;
            long o = (long)b * TB.Bytes + Qs;
            Vector256<int> i00 = c0, i01 = c1, i10 = c0, i11 = c1, i20 = c0, i21 = c1, i30 = c0, i31 = c1;
            if (TB.Nibbles)
            {
                // One dword of a row: its quants k..k+3 (low nibbles) and k+16..k+19 (high), quads k and k+4.
                for (int k = 0; k < 4; k++)
                {
                    var x0 = Vector256.Load(q0 + 32 * k);
                    var x1 = Vector256.Load(q1 + 32 * k);
                    var z0 = Vector256.Load(q0 + 32 * (k + 4));
                    var z1 = Vector256.Load(q1 + 32 * (k + 4));
                    var d = Bcast(w0 + o + 4 * k);
                    var lo = d & low;
                    var hi = (d.AsUInt32() >>> 4).AsByte() & low;
                    i00 = Dp(Dp(i00, lo, x0), hi, z0); i01 = Dp(Dp(i01, lo, x1), hi, z1);
                    d = Bcast(w1 + o + 4 * k);
                    lo = d & low;
                    hi = (d.AsUInt32() >>> 4).AsByte() & low;
                    i10 = Dp(Dp(i10, lo, x0), hi, z0); i11 = Dp(Dp(i11, lo, x1), hi, z1);
                    d = Bcast(w2 + o + 4 * k);
                    lo = d & low;
                    hi = (d.AsUInt32() >>> 4).AsByte() & low;
                    i20 = Dp(Dp(i20, lo, x0), hi, z0); i21 = Dp(Dp(i21, lo, x1), hi, z1);
                    d = Bcast(w3 + o + 4 * k);
                    lo = d & low;
                    hi = (d.AsUInt32() >>> 4).AsByte() & low;
                    i30 = Dp(Dp(i30, lo, x0), hi, z0); i31 = Dp(Dp(i31, lo, x1), hi, z1);
                }
            }
            else
            {
                for (int k = 0; k < 8; k++)
                {
                    var x0 = Vector256.Load(q0 + 32 * k);
                    var x1 = Vector256.Load(q1 + 32 * k);
                    var u = Bcast(w0 + o + 4 * k) ^ flip;
                    i00 = Dp(i00, u, x0); i01 = Dp(i01, u, x1);
                    u = Bcast(w1 + o + 4 * k) ^ flip;
                    i10 = Dp(i10, u, x0); i11 = Dp(i11, u, x1);
                    u = Bcast(w2 + o + 4 * k) ^ flip;
                    i20 = Dp(i20, u, x0); i21 = Dp(i21, u, x1);
                    u = Bcast(w3 + o + 4 * k) ^ flip;
                    i30 = Dp(i30, u, x0); i31 = Dp(i31, u, x1);
                }
            }
            o -= Qs;
            var d0 = Vector256.Load(a0.D + b * G);
            var d1 = Vector256.Load(a1.D + b * G);
            var r = Vector256.Create(f16[*(ushort*)(w0 + o)]);
            f00 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i00), r * d0, f00);
            f01 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i01), r * d1, f01);
            r = Vector256.Create(f16[*(ushort*)(w1 + o)]);
            f10 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i10), r * d0, f10);
            f11 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i11), r * d1, f11);
            r = Vector256.Create(f16[*(ushort*)(w2 + o)]);
            f20 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i20), r * d0, f20);
            f21 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i21), r * d1, f21);
            r = Vector256.Create(f16[*(ushort*)(w3 + o)]);
            f30 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i30), r * d0, f30);
            f31 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i31), r * d1, f31);
        }
        IntGemm.Store(f00, f10, f20, f30, y, ys, nr, Math.Min(nt, G));
        IntGemm.Store(f01, f11, f21, f31, y + G * ys, ys, nr, nt - G);
    }
}
