using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace FitLM.Tensors;

/// <summary>
/// Integer dot products of one ggml-quantized weight row with one quantized activation row (ggml's
/// ggml_vec_dot_*_q8_*): q4_0/q5_0/q8_0 with q8_0, q4_1/q5_1 with q8_1, k-quants with q8_K. Within a block
/// the products are summed exactly in int32 and the block's scales are applied once, as llama.cpp does, so
/// results equal llama.cpp's up to the order of float additions.
/// <para>
/// Each type has a scalar reference (the definition: exact integer sums per block, then float) and two SIMD
/// paths. <see cref="Isa.AvxVnni"/> uses vpdpbusd (u8×s8 → i32): it needs an unsigned operand, so signed
/// weights are offset to unsigned (w+128 for q8_0: one xor; the nibbles themselves for q4_0/q5_0) and the
/// offset times the block's activation sum (kept by the quantizer) is subtracted. <see cref="Isa.Avx2"/> uses
/// vpmaddubsw + vpmaddwd instead; its int16 pair sums must not saturate, which holds for 4- to 6-bit unsigned
/// quants against |a| ≤ 127, and for q8_0 by the abs/sign trick (|w|·sign(a, w)). The k-quant kernels use
/// maddubs + madd-with-scale on both paths (the 6-bit sub-block scales are applied in int16 × int16 → int32,
/// which vpdpbusd cannot do); their mins and zero points use the activation bsums.
/// </para>
/// </summary>
internal static unsafe class IntDot
{
    /// <summary>Which code path runs; tests force each one.</summary>
    public enum Isa { Scalar, Avx2, AvxVnni }

    /// <summary>The fastest path this machine runs; chosen once.</summary>
    public static Isa Best { get; } =
        IsSupported(Isa.AvxVnni) ? Isa.AvxVnni : IsSupported(Isa.Avx2) ? Isa.Avx2 : Isa.Scalar;

    public static bool IsSupported(Isa isa) => isa switch
    {
        Isa.Scalar => true,
        Isa.Avx2 => Avx2.IsSupported && Fma.IsSupported,
        Isa.AvxVnni => Avx2.IsSupported && Fma.IsSupported && AvxVnni.IsSupported,
        _ => false,
    };

    /// <summary>Weight types with an integer kernel (every type whose <see cref="ActivationQuant.FormatFor"/> is not F32).</summary>
    public static bool Supports(GgmlType type) => type is GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1
        or GgmlType.Q8_0 or GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K;

    /// <summary>
    /// The dot product of one row with one activation row quantized by
    /// <see cref="ActivationQuant.Quantize(GgmlType, float*, int, int, QuantizedActivations, bool)"/> for this type
    /// (tests and tools; MatMul uses <see cref="Kernel"/>).
    /// </summary>
    public static float Dot(GgmlType type, byte* row, in ActRow a, int cols, Isa isa)
    {
        float y;
        Kernel(type, isa)(row, 0, 1, a, cols, &y);
        return y;
    }

    /// <summary>
    /// The kernel for a weight type and path, as a function pointer (chosen once per call, not per row):
    /// y[r] = dot(W[r], a) for r in [0, rows), W[r] at w + r·rowBytes.
    /// </summary>
    internal static delegate*<byte*, long, int, in ActRow, int, float*, void> Kernel(GgmlType type, Isa isa)
    {
        if (!IsSupported(isa)) throw new PlatformNotSupportedException($"{isa} is not supported on this machine");
        return isa switch
        {
            Isa.AvxVnni => For<VnniPath>(type),
            Isa.Avx2 => For<Avx2Path>(type),
            _ => For<ScalarPath>(type),
        };
    }

    private static delegate*<byte*, long, int, in ActRow, int, float*, void> For<TI>(GgmlType type) where TI : struct, IIsa => type switch
    {
        GgmlType.Q8_0 => &Rows<KQ8_0, TI>,
        GgmlType.Q4_0 => &Rows<KQ4_0, TI>,
        GgmlType.Q5_0 => &Rows<KQ5_0, TI>,
        GgmlType.Q4_1 => &Rows<KQ4_1, TI>,
        GgmlType.Q5_1 => &Rows<KQ5_1, TI>,
        GgmlType.Q2_K => &Rows<KQ2_K, TI>,
        GgmlType.Q3_K => &Rows<KQ3_K, TI>,
        GgmlType.Q4_K => &Rows<KQ4_K, TI>,
        GgmlType.Q5_K => &Rows<KQ5_K, TI>,
        GgmlType.Q6_K => &Rows<KQ6_K, TI>,
        _ => throw new FitLMException($"no integer dot kernel for {type}"),
    };

    /// <summary>
    /// y[t·yStride + r] = dot(W[r], token t) for rows r in [0, rows) and tokens t in [0, n) of <paramref name="act"/>
    /// (quantized and prepared for <paramref name="type"/>): the batched decode of the server. Every token's result is
    /// the one <see cref="Kernel"/> gives it alone, bit for bit: integer block sums are exact in any order, and each
    /// token keeps the one-row kernel's float operations and accumulators. q8_0, q4_0, q4_K and q6_K (the bulk of
    /// most files) have kernels that load, unpack and scale each weight block once for eight tokens (with AVX-512's 32
    /// registers; q8_0/q4_0 also four without); other types run the one-row kernel per token over the same chunk of
    /// rows (from cache after the first).
    /// </summary>
    internal static void MultiRows(GgmlType type, Isa isa, byte* w, long rowBytes, int rows, QuantizedActivations act, int n, int cols, float* y, long yStride)
    {
        if (!IsSupported(isa)) throw new PlatformNotSupportedException($"{isa} is not supported on this machine");
        switch (isa)
        {
            case Isa.AvxVnni: MultiRows<VnniPath>(type, w, rowBytes, rows, act, n, cols, y, yStride); break;
            case Isa.Avx2: MultiRows<Avx2Path>(type, w, rowBytes, rows, act, n, cols, y, yStride); break;
            default: MultiRows<ScalarPath>(type, w, rowBytes, rows, act, n, cols, y, yStride); break;
        }
    }

    /// <summary>Eight-token kernels: their accumulators and shared registers need AVX-512's 32 vector registers.</summary>
    private static readonly bool Wide = Avx512F.VL.IsSupported;

    /// <summary>
    /// How far the multi-token kernels (integer and float) prefetch: one row ahead. Measured on llama-0.8b q8_0 ×8,
    /// 96 → 140 tok/s with the eight-token kernel (2 or 4 rows: no better).
    /// </summary>
    internal static long MultiPrefetchDistance(long rowBytes) => Sse.IsSupported ? rowBytes : 0;

    /// <summary>
    /// Block pairs per column tile of the eight-token kernels: eight tokens' activations for 2048 columns (about 32 KiB
    /// with their pair scales and offsets) stay in L1 across the rows of a chunk. Measured on q8_0 ×8: 2048×5632
    /// (ffn_down) ran at 197 GFLOP/s untiled against 300 for 5632×2048.
    /// </summary>
    private const int TilePairs = 32;

    [ThreadStatic] private static Vector256<float>* t_acc;
    [ThreadStatic] private static int t_accLength;

    private static Vector256<float>* AccBuffer(int vectors)
    {
        if (t_accLength < vectors)
        {
            if (t_acc != null) NativeMemory.AlignedFree(t_acc);
            t_acc = (Vector256<float>*)NativeMemory.AlignedAlloc((nuint)vectors * 32, 64);
            t_accLength = vectors;
        }
        return t_acc;
    }

    private static void MultiRows<TI>(GgmlType type, byte* w, long rowBytes, int rows, QuantizedActivations act, int n, int cols, float* y, long yStride)
        where TI : struct, IIsa
    {
        int t = 0;
        // Each row is followed by several tokens' work, long enough for the hardware prefetcher to fall behind the
        // stream of rows from memory: fetch the next rows ahead, as the one-token kernel does.
        long ahead = TI.Simd && rows > 1 ? MultiPrefetchDistance(rowBytes) : 0;
        if (TI.Simd && Wide && type is GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_K or GgmlType.Q6_K)
        {
            ActRow* rs = stackalloc ActRow[8];
            // q8_0/q4_0 go over the columns in tiles of block pairs; the k-quant kernels take whole rows (one tile).
            bool tiled = type is GgmlType.Q8_0 or GgmlType.Q4_0;
            int nb = cols / BlockLayout.QK, np = nb / 2, pairBytes = type == GgmlType.Q8_0 ? 2 * BlockLayout.Q8_0.Bytes : 2 * BlockLayout.Q4_0.Bytes, tile = tiled ? TilePairs : Math.Max(np, 1);
            Vector256<float>* acc = np > tile ? AccBuffer(rows * 16) : null;
            for (; t + 8 <= n; t += 8)
            {
                for (int k = 0; k < 8; k++) rs[k] = act.Row(t + k);
                float* yt = y + t * yStride;
                for (int p0 = 0; p0 == 0 || p0 < np; p0 += tile)
                {
                    int p1 = Math.Min(np, p0 + tile);
                    bool first = p0 == 0, last = p1 == np;
                    for (int r = 0; r < rows; r++)
                    {
                        byte* wr = w + r * rowBytes;
                        PrefetchAhead(wr + (long)p0 * pairBytes, last ? rowBytes - (long)p0 * pairBytes : (long)(p1 - p0) * pairBytes, ahead);
                        switch (type)
                        {
                            case GgmlType.Q8_0: Q8_0x8<TI>(wr, rs, p0, p1, nb, first, last, acc + r * 16, yt + r, yStride); break;
                            case GgmlType.Q4_0: Q4_0x8<TI>(wr, rs, p0, p1, nb, first, last, acc + r * 16, yt + r, yStride); break;
                            case GgmlType.Q4_K: Q4_Kx8<TI>(wr, rs, cols, yt + r, yStride); break;
                            default: Q6_Kx8<TI>(wr, rs, cols, yt + r, yStride); break;
                        }
                    }
                }
            }
        }
        if (TI.Simd && type is GgmlType.Q8_0 or GgmlType.Q4_0)
        {
            for (; t + 4 <= n; t += 4)
            {
                ActRow a0 = act.Row(t), a1 = act.Row(t + 1), a2 = act.Row(t + 2), a3 = act.Row(t + 3);
                float* yt = y + t * yStride;
                for (int r = 0; r < rows; r++)
                {
                    PrefetchAhead(w + r * rowBytes, rowBytes, ahead);
                    if (type == GgmlType.Q8_0) Q8_0x4<TI>(w + r * rowBytes, a0, a1, a2, a3, cols, yt + r, yStride);
                    else Q4_0x4<TI>(w + r * rowBytes, a0, a1, a2, a3, cols, yt + r, yStride);
                }
            }
        }
        var one = For<TI>(type);
        for (; t < n; t++) one(w, rowBytes, rows, act.Row(t), cols, y + t * yStride);
    }

    // ---------------------------------------------------------------- path and kernel plumbing

    /// <summary>A code path as a type parameter: the JIT compiles one copy of each kernel per path, branch-free.</summary>
    internal interface IIsa
    {
        static abstract bool Simd { get; }
        static abstract bool Vnni { get; }
    }

    internal struct ScalarPath : IIsa { public static bool Simd => false; public static bool Vnni => false; }
    internal struct Avx2Path : IIsa { public static bool Simd => true; public static bool Vnni => false; }
    internal struct VnniPath : IIsa { public static bool Simd => true; public static bool Vnni => true; }

    private interface IRowDot
    {
        static abstract float Dot<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa;
    }

    /// <summary>
    /// How far ahead of the row being multiplied the decode kernels prefetch: at least this many bytes, in
    /// whole rows. One core's demand misses alone keep too few lines in flight to stream from DRAM at full
    /// speed (measured on a 2-core slice of a Xeon: 16 → 24 GB/s for q8_0 with 2 threads, the read bandwidth
    /// being 25); about 2 KiB ahead worked best for rows of 1-2 KiB. FITLM_PREFETCH_BYTES overrides it (tuning; read by <see cref="CpuOptions"/>).
    /// </summary>
    internal static readonly int PrefetchBytes = CpuOptions.Default.PrefetchBytes;

    /// <summary>The distance to prefetch ahead: <see cref="PrefetchBytes"/> rounded up to whole rows (0: none).</summary>
    internal static long PrefetchDistance(long rowBytes) =>
        rowBytes <= 0 || !Sse.IsSupported ? 0 : (PrefetchBytes + rowBytes - 1) / rowBytes * rowBytes;

    /// <summary>Prefetches the row <paramref name="distance"/> bytes ahead of <paramref name="row"/> (prefetches never fault).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void PrefetchAhead(byte* row, long rowBytes, long distance)
    {
        if (distance == 0) return;
        byte* p = row + distance;
        for (long o = 0; o < rowBytes; o += 64) Sse.Prefetch0(p + o);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Rows<TK, TI>(byte* w, long rowBytes, int rows, in ActRow a, int cols, float* y)
        where TK : struct, IRowDot where TI : struct, IIsa
    {
        long ahead = TI.Simd && rows > 1 ? PrefetchDistance(rowBytes) : 0;
        for (int r = 0; r < rows; r++)
        {
            PrefetchAhead(w + r * rowBytes, rowBytes, ahead);
            y[r] = TK.Dot<TI>(w + r * rowBytes, a, cols);
        }
    }

    private struct KQ8_0 : IRowDot { public static float Dot<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa => TI.Simd ? Q8_0<TI>(w, a, cols) : RefQ8_0(w, a, cols); }
    private struct KQ4_0 : IRowDot { public static float Dot<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa => TI.Simd ? Q4_0<TI>(w, a, cols) : RefQ4_0(w, a, cols); }
    private struct KQ5_0 : IRowDot { public static float Dot<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa => TI.Simd ? Q5_0<TI>(w, a, cols) : RefQ5_0(w, a, cols); }
    private struct KQ4_1 : IRowDot { public static float Dot<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa => TI.Simd ? Q4_1<TI>(w, a, cols) : RefQ4_1(w, a, cols); }
    private struct KQ5_1 : IRowDot { public static float Dot<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa => TI.Simd ? Q5_1<TI>(w, a, cols) : RefQ5_1(w, a, cols); }
    private struct KQ2_K : IRowDot { public static float Dot<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa => TI.Simd ? Q2_K<TI>(w, a, cols) : RefQ2_K(w, a, cols); }
    private struct KQ3_K : IRowDot { public static float Dot<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa => TI.Simd ? Q3_K<TI>(w, a, cols) : RefQ3_K(w, a, cols); }
    private struct KQ4_K : IRowDot { public static float Dot<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa => TI.Simd ? Q4_K<TI>(w, a, cols) : RefQ4_K(w, a, cols); }
    private struct KQ5_K : IRowDot { public static float Dot<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa => TI.Simd ? Q5_K<TI>(w, a, cols) : RefQ5_K(w, a, cols); }
    private struct KQ6_K : IRowDot { public static float Dot<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa => TI.Simd ? Q6_K<TI>(w, a, cols) : RefQ6_K(w, a, cols); }

    // ---------------------------------------------------------------- fp16 scales

    /// <summary>
    /// fp16 → float for every bit pattern (256 KiB, as ggml's table on x86: a block scale costs one load; the
    /// scales of a matrix take few distinct values, so the lines in use stay cached). .NET exposes no F16C.
    /// </summary>
    internal static readonly float* F16 = BuildF16Table();

    private static float* BuildF16Table()
    {
        var t = (float*)NativeMemory.AlignedAlloc(65536 * sizeof(float), 64);
        for (int i = 0; i < 65536; i++) t[i] = Dequantize.HalfToSingle((ushort)i);
        return t;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float H(byte* p) => F16[*(ushort*)p];

    // ---------------------------------------------------------------- shared SIMD helpers

    /// <summary>acc + Σ u·s over groups of 4 bytes (u unsigned, s signed). The Avx2 form needs |u·s pair| ≤ 32767.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<int> DotUS<TI>(Vector256<int> acc, Vector256<byte> u, Vector256<sbyte> s) where TI : struct, IIsa =>
        TI.Vnni
            ? AvxVnni.MultiplyWideningAndAdd(acc, u, s)
            : Avx2.Add(acc, Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), Vector256.Create((short)1)));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Cvt(Vector256<int> v) => Avx.ConvertToVector256Single(v);

    // ---------------------------------------------------------------- q8_0 × q8_0

    private static float RefQ8_0(byte* w, in ActRow a, int cols)
    {
        float sum = 0;
        for (int b = 0; b < cols / BlockLayout.QK; b++)
        {
            byte* blk = w + BlockLayout.Q8_0.Bytes * b;
            sbyte* q = (sbyte*)(blk + BlockLayout.Q8_0.Qs);
            sbyte* y = a.Q + BlockLayout.QK * b;
            int s = 0;
            for (int j = 0; j < BlockLayout.QK; j++) s += q[j] * y[j];
            sum += s * (H(blk + BlockLayout.Q8_0.D) * a.D[b]);
        }
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Q8_0<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa
    {
        // Two blocks per register, as the nibble types (see PairDot): the first 16 quants of blocks 2p and 2p+1 in
        // one register and the last 16 in another, against the pair-interleaved activations, so the two blocks'
        // sums land in lanes 0-3 and 4-7 and one convert, one multiply and one fma serve both blocks.
        var acc = Vector256<float>.Zero;
        const int B = BlockLayout.Q8_0.Bytes;
        int nb = cols / BlockLayout.QK, np = nb / 2;
        sbyte* qp = a.QP;
        float* dp = a.DP;
        byte* qu = a.QU;
        float* f16 = F16;
        for (int p = 0; p < np; p++, w += 2 * B, qp += 64, qu += 64, dp += 8)
        {
            Q8_0Pair<TI>(w, out var lo, out var hi, out var init);
            acc = Q8_0PairToken<TI>(lo, hi, init, PairScale(f16, w, w + B), qp, qu, dp, acc);
        }
        if ((nb & 1) != 0) acc = Q8_0Block<TI>(w, a.Q + BlockLayout.QK * (nb - 1), a.D + nb - 1, a.Z + nb - 1, f16, acc);
        return Vector256.Sum(acc);
    }

    /// <summary>
    /// The quants of q8_0 blocks w, w + 34 as [first 16 of each | last 16 of each], in the form the token step takes:
    /// VNNI: offset to unsigned (w + 128, the sign bit flipped); Avx2: signed as stored.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Q8_0Pair<TI>(byte* w, out Vector256<byte> lo, out Vector256<byte> hi, out Vector256<int> init) where TI : struct, IIsa
    {
        const int B = BlockLayout.Q8_0.Bytes, Qs = BlockLayout.Q8_0.Qs;
        lo = Vector256.Create(Vector128.Load(w + Qs), Vector128.Load(w + B + Qs));
        hi = Vector256.Create(Vector128.Load(w + Qs + 16), Vector128.Load(w + B + Qs + 16));
        // VNNI multiplies unsigned by signed bytes: the activations are the unsigned side (a + 128, ActRow.QU) and each
        // lane starts at -128·Σw over its own 8 weights, so every lane ends at Σ a·w over its elements, exactly what
        // the Avx2 form computes, and the start is the weights' alone: one per pair, shared by every token.
        init = TI.Vnni
            ? Vector256<int>.Zero - AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero,
                Vector256.Create((byte)0x80), lo.AsSByte()), Vector256.Create((byte)0x80), hi.AsSByte())
            : Vector256<int>.Zero;
    }

    /// <summary>One token's term of a q8_0 block pair: Σ over both halves, scaled by [dw·da] per block.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Q8_0PairToken<TI>(Vector256<byte> lo, Vector256<byte> hi, Vector256<int> init, Vector256<float> wscale, sbyte* qp, byte* qu, float* dp,
        Vector256<float> acc) where TI : struct, IIsa
    {
        Vector256<int> s;
        if (TI.Vnni)
            s = AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(init, Vector256.Load(qu), lo.AsSByte()), Vector256.Load(qu + 32), hi.AsSByte());
        else
        {
            // |w|·sign(a, w): int16 pairs ≤ 2·128·127, so each half needs its own vpmaddwd.
            var wl = lo.AsSByte();
            var wh = hi.AsSByte();
            var ones = Vector256.Create((short)1);
            s = Avx2.Add(Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(Avx2.Abs(wl), Avx2.Sign(Vector256.Load(qp), wl)), ones),
                Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(Avx2.Abs(wh), Avx2.Sign(Vector256.Load(qp + 32), wh)), ones));
        }
        return Fma.MultiplyAdd(Cvt(s), wscale * Vector256.Load(dp), acc);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Q8_0Block<TI>(byte* blk, sbyte* q, float* d, int* z, float* f16, Vector256<float> acc) where TI : struct, IIsa
    {
        var wq = Vector256.Load((sbyte*)(blk + BlockLayout.Q8_0.Qs));
        Vector256<int> s;
        if (TI.Vnni)
            // Σ (w+128)·a - 128·Σa: w+128 is w with the sign bit flipped; z = -128·Σa starts the sum.
            s = AvxVnni.MultiplyWideningAndAdd(Vector256.CreateScalar(*z), wq.AsByte() ^ Vector256.Create((byte)0x80), Vector256.Load(q));
        else
            s = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(Avx2.Abs(wq), Avx2.Sign(Vector256.Load(q), wq)), Vector256.Create((short)1));
        // Both scales arrive by broadcast loads (no shuffle port), one multiply combines them.
        return Fma.MultiplyAdd(Cvt(s), Vector256.Create(f16[*(ushort*)(blk + BlockLayout.Q8_0.D)]) * Vector256.Create(*d), acc);
    }

    /// <summary>
    /// <see cref="Q8_0{TI}"/> for four tokens: each block pair is loaded (and offset) and its scales converted once;
    /// every token's accumulator is fed exactly as the one-token kernel feeds it.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Q8_0x4<TI>(byte* w, in ActRow r0, in ActRow r1, in ActRow r2, in ActRow r3, int cols, float* y, long ys) where TI : struct, IIsa
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        const int B = BlockLayout.Q8_0.Bytes;
        int nb = cols / BlockLayout.QK, np = nb / 2;
        float* f16 = F16;
        for (int p = 0; p < np; p++, w += 2 * B)
        {
            Q8_0Pair<TI>(w, out var lo, out var hi, out var init);
            var sc = PairScale(f16, w, w + B);
            long o = 64L * p, v = 8L * p;
            a0 = Q8_0PairToken<TI>(lo, hi, init, sc, r0.QP + o, r0.QU + o, r0.DP + v, a0);
            a1 = Q8_0PairToken<TI>(lo, hi, init, sc, r1.QP + o, r1.QU + o, r1.DP + v, a1);
            a2 = Q8_0PairToken<TI>(lo, hi, init, sc, r2.QP + o, r2.QU + o, r2.DP + v, a2);
            a3 = Q8_0PairToken<TI>(lo, hi, init, sc, r3.QP + o, r3.QU + o, r3.DP + v, a3);
        }
        if ((nb & 1) != 0)
        {
            int b = nb - 1;
            a0 = Q8_0Block<TI>(w, r0.Q + 32 * b, r0.D + b, r0.Z + b, f16, a0);
            a1 = Q8_0Block<TI>(w, r1.Q + 32 * b, r1.D + b, r1.Z + b, f16, a1);
            a2 = Q8_0Block<TI>(w, r2.Q + 32 * b, r2.D + b, r2.Z + b, f16, a2);
            a3 = Q8_0Block<TI>(w, r3.Q + 32 * b, r3.D + b, r3.Z + b, f16, a3);
        }
        y[0] = Vector256.Sum(a0);
        y[ys] = Vector256.Sum(a1);
        y[2 * ys] = Vector256.Sum(a2);
        y[3 * ys] = Vector256.Sum(a3);
    }

    /// <summary>
    /// <see cref="Q8_0x4{TI}"/> for eight tokens (needs AVX-512's 32 vector registers), over block pairs [p0, p1) of
    /// the row at w: the accumulators start at zero when <paramref name="first"/>, else from <paramref name="acc"/>
    /// (a store and a load are exact), and are stored back there unless <paramref name="last"/>, which finishes the row
    /// (the unpaired block, the sums) into y. Column tiles keep eight tokens' activations in L1 for long rows.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Q8_0x8<TI>(byte* w, ActRow* r, int p0, int p1, int nb, bool first, bool last, Vector256<float>* acc, float* y, long ys)
        where TI : struct, IIsa
    {
        Vector256<float> a0 = first ? default : acc[0], a1 = first ? default : acc[1], a2 = first ? default : acc[2], a3 = first ? default : acc[3], a4 = first ? default : acc[4], a5 = first ? default : acc[5], a6 = first ? default : acc[6], a7 = first ? default : acc[7];
        sbyte* q0 = r[0].QP, q1 = r[1].QP, q2 = r[2].QP, q3 = r[3].QP, q4 = r[4].QP, q5 = r[5].QP, q6 = r[6].QP, q7 = r[7].QP;
        float* d0 = r[0].DP, d1 = r[1].DP, d2 = r[2].DP, d3 = r[3].DP, d4 = r[4].DP, d5 = r[5].DP, d6 = r[6].DP, d7 = r[7].DP;
        byte* u0 = r[0].QU, u1 = r[1].QU, u2 = r[2].QU, u3 = r[3].QU, u4 = r[4].QU, u5 = r[5].QU, u6 = r[6].QU, u7 = r[7].QU;
        const int B = BlockLayout.Q8_0.Bytes;
        float* f16 = F16;
        byte* wp = w + 2L * B * p0;
        for (int p = p0; p < p1; p++, wp += 2 * B)
        {
            Q8_0Pair<TI>(wp, out var lo, out var hi, out var init);
            var sc = PairScale(f16, wp, wp + B);
            long o = 64L * p, v = 8L * p;
            a0 = Q8_0PairToken<TI>(lo, hi, init, sc, q0 + o, u0 + o, d0 + v, a0);
            a1 = Q8_0PairToken<TI>(lo, hi, init, sc, q1 + o, u1 + o, d1 + v, a1);
            a2 = Q8_0PairToken<TI>(lo, hi, init, sc, q2 + o, u2 + o, d2 + v, a2);
            a3 = Q8_0PairToken<TI>(lo, hi, init, sc, q3 + o, u3 + o, d3 + v, a3);
            a4 = Q8_0PairToken<TI>(lo, hi, init, sc, q4 + o, u4 + o, d4 + v, a4);
            a5 = Q8_0PairToken<TI>(lo, hi, init, sc, q5 + o, u5 + o, d5 + v, a5);
            a6 = Q8_0PairToken<TI>(lo, hi, init, sc, q6 + o, u6 + o, d6 + v, a6);
            a7 = Q8_0PairToken<TI>(lo, hi, init, sc, q7 + o, u7 + o, d7 + v, a7);
        }
        if (!last)
        {
            acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3; acc[4] = a4; acc[5] = a5; acc[6] = a6; acc[7] = a7;
            return;
        }
        if ((nb & 1) != 0)
        {
            int b = nb - 1;
            a0 = Q8_0Block<TI>(wp, r[0].Q + 32 * b, r[0].D + b, r[0].Z + b, f16, a0);
            a1 = Q8_0Block<TI>(wp, r[1].Q + 32 * b, r[1].D + b, r[1].Z + b, f16, a1);
            a2 = Q8_0Block<TI>(wp, r[2].Q + 32 * b, r[2].D + b, r[2].Z + b, f16, a2);
            a3 = Q8_0Block<TI>(wp, r[3].Q + 32 * b, r[3].D + b, r[3].Z + b, f16, a3);
            a4 = Q8_0Block<TI>(wp, r[4].Q + 32 * b, r[4].D + b, r[4].Z + b, f16, a4);
            a5 = Q8_0Block<TI>(wp, r[5].Q + 32 * b, r[5].D + b, r[5].Z + b, f16, a5);
            a6 = Q8_0Block<TI>(wp, r[6].Q + 32 * b, r[6].D + b, r[6].Z + b, f16, a6);
            a7 = Q8_0Block<TI>(wp, r[7].Q + 32 * b, r[7].D + b, r[7].Z + b, f16, a7);
        }
        y[0 * ys] = Vector256.Sum(a0);
        y[1 * ys] = Vector256.Sum(a1);
        y[2 * ys] = Vector256.Sum(a2);
        y[3 * ys] = Vector256.Sum(a3);
        y[4 * ys] = Vector256.Sum(a4);
        y[5 * ys] = Vector256.Sum(a5);
        y[6 * ys] = Vector256.Sum(a6);
        y[7 * ys] = Vector256.Sum(a7);
    }

    // ---------------------------------------------------------------- nibble types: two blocks per register

    /// <summary>
    /// q4_0/q5_0/q4_1/q5_1 blocks 2p and 2p+1 as one register pair: [low halves of both | ...]. Loading the
    /// 16 quant bytes of each block into the two 128-bit lanes of one register, the low nibbles are elements
    /// 0..15 of both blocks and the high nibbles elements 16..31: two vpdpbusd against the pair-interleaved
    /// activations (ActRow.QP) give the two blocks' sums in lanes 0-3 and 4-7, scaled by one multiply with
    /// [dw0×4 | dw1×4]·[da0×4 | da1×4]. Half the shifts, converts and fmas of one block at a time.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> PairDot<TI>(Vector256<int> init, Vector256<byte> raw, Vector256<byte> hiBits, Vector256<byte> loBits, sbyte* qp) where TI : struct, IIsa
    {
        BlockDecode.SplitNibbles(raw, out var lo, out var hi);
        return PairDotSplit<TI>(init, lo | loBits, hi | hiBits, qp);
    }

    /// <summary><see cref="PairDot{TI}"/> on quants already split into the two halves' registers (unsigned, ≤ 31).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> PairDotSplit<TI>(Vector256<int> init, Vector256<byte> lo, Vector256<byte> hi, sbyte* qp) where TI : struct, IIsa
    {
        if (TI.Vnni) return DotUS<TI>(DotUS<TI>(init, lo, Vector256.Load(qp)), hi, Vector256.Load(qp + 32));
        // Without VNNI each u8×s8 dot is vpmaddubsw (pairs → i16) + vpmaddwd (→ i32). The nibbles are ≤ 31, so a
        // pair is at most 2·31·128 = 7936 in magnitude and the two halves' pairs add in 16 bits without overflow:
        // one vpmaddwd for both halves instead of two (this loop is compute-bound on CPUs without VNNI).
        var pairs = Avx2.MultiplyAddAdjacent(lo, Vector256.Load(qp)) + Avx2.MultiplyAddAdjacent(hi, Vector256.Load(qp + 32));
        return Avx2.Add(init, Avx2.MultiplyAddAdjacent(pairs, Vector256.Create((short)1)));
    }

    /// <summary>The two blocks' weight scales (fp16 d at the block start in every 32-element type) as [d0×4 | d1×4].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> PairScale(float* f16, byte* b0, byte* b1) =>
        Vector256.Create(Vector128.Create(f16[*(ushort*)b0]), Vector128.Create(f16[*(ushort*)b1]));

    // ---------------------------------------------------------------- q4_0 × q8_0

    private static float RefQ4_0(byte* w, in ActRow a, int cols)
    {
        float sum = 0;
        for (int b = 0; b < cols / BlockLayout.QK; b++)
        {
            byte* blk = w + BlockLayout.Q4_0.Bytes * b;
            byte* qs = blk + BlockLayout.Q4_0.Qs;
            sbyte* y = a.Q + BlockLayout.QK * b;
            int s = 0;
            for (int j = 0; j < 16; j++) s += ((qs[j] & 0xF) - 8) * y[j] + ((qs[j] >> 4) - 8) * y[j + 16];
            sum += s * (H(blk + BlockLayout.Q4_0.D) * a.D[b]);
        }
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Q4_0<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa
    {
        // Σ (q-8)·a = Σ q·a - 8·Σa with the nibbles q (0..15) as the unsigned operand (ZP/Z hold -8·Σa).
        var acc0 = Vector256<float>.Zero;
        var acc1 = Vector256<float>.Zero;
        const int B = BlockLayout.Q4_0.Bytes, Qs = BlockLayout.Q4_0.Qs;
        int nb = cols / BlockLayout.QK, np = nb / 2;
        sbyte* qp = a.QP;
        float* dp = a.DP;
        int* zp = a.ZP;
        float* f16 = F16;
        for (int p = 0; p < np; p++, w += 2 * B, qp += 64, dp += 8, zp += 8)
        {
            var raw = Vector256.Create(Vector128.Load(w + Qs), Vector128.Load(w + B + Qs));
            var s = PairDot<TI>(Vector256.Load(zp), raw, Vector256<byte>.Zero, Vector256<byte>.Zero, qp);
            var sc = PairScale(f16, w, w + B) * Vector256.Load(dp);
            if ((p & 1) == 0) acc0 = Fma.MultiplyAdd(Cvt(s), sc, acc0);
            else acc1 = Fma.MultiplyAdd(Cvt(s), sc, acc1);
        }
        if ((nb & 1) != 0)
        {
            int b = nb - 1;
            var s = DotUS<TI>(Vector256.CreateScalar(a.Z[b]), BlockDecode.Nibbles(w + Qs), Vector256.Load(a.Q + BlockLayout.QK * b));
            acc0 = Fma.MultiplyAdd(Cvt(s), Vector256.Create(f16[*(ushort*)w] * a.D[b]), acc0);
        }
        return Vector256.Sum(acc0 + acc1);
    }

    /// <summary>
    /// <see cref="Q4_0{TI}"/> for four tokens: each block pair is loaded, split into nibbles and its scales
    /// converted once; every token keeps its own two accumulators, fed exactly as the one-token kernel feeds them.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Q4_0x4<TI>(byte* w, in ActRow r0, in ActRow r1, in ActRow r2, in ActRow r3, int cols, float* y, long ys) where TI : struct, IIsa
    {
        Vector256<float> a0 = default, b0 = default, a1 = default, b1 = default, a2 = default, b2 = default, a3 = default, b3 = default;
        const int B = BlockLayout.Q4_0.Bytes, Qs = BlockLayout.Q4_0.Qs;
        int nb = cols / BlockLayout.QK, np = nb / 2;
        float* f16 = F16;
        for (int p = 0; p < np; p++, w += 2 * B)
        {
            BlockDecode.SplitNibbles(Vector256.Create(Vector128.Load(w + Qs), Vector128.Load(w + B + Qs)), out var lo, out var hi);
            var sc = PairScale(f16, w, w + B);
            long o = 64L * p, v = 8L * p;
            if ((p & 1) == 0)
            {
                a0 = Q4_0Token<TI>(lo, hi, sc, r0.QP + o, r0.DP + v, r0.ZP + v, a0);
                a1 = Q4_0Token<TI>(lo, hi, sc, r1.QP + o, r1.DP + v, r1.ZP + v, a1);
                a2 = Q4_0Token<TI>(lo, hi, sc, r2.QP + o, r2.DP + v, r2.ZP + v, a2);
                a3 = Q4_0Token<TI>(lo, hi, sc, r3.QP + o, r3.DP + v, r3.ZP + v, a3);
            }
            else
            {
                b0 = Q4_0Token<TI>(lo, hi, sc, r0.QP + o, r0.DP + v, r0.ZP + v, b0);
                b1 = Q4_0Token<TI>(lo, hi, sc, r1.QP + o, r1.DP + v, r1.ZP + v, b1);
                b2 = Q4_0Token<TI>(lo, hi, sc, r2.QP + o, r2.DP + v, r2.ZP + v, b2);
                b3 = Q4_0Token<TI>(lo, hi, sc, r3.QP + o, r3.DP + v, r3.ZP + v, b3);
            }
        }
        if ((nb & 1) != 0)
        {
            int b = nb - 1;
            var nib = BlockDecode.Nibbles(w + Qs);
            float dw = f16[*(ushort*)w];
            a0 = Q4_0Odd<TI>(nib, dw, r0, b, a0);
            a1 = Q4_0Odd<TI>(nib, dw, r1, b, a1);
            a2 = Q4_0Odd<TI>(nib, dw, r2, b, a2);
            a3 = Q4_0Odd<TI>(nib, dw, r3, b, a3);
        }
        y[0] = Vector256.Sum(a0 + b0);
        y[ys] = Vector256.Sum(a1 + b1);
        y[2 * ys] = Vector256.Sum(a2 + b2);
        y[3 * ys] = Vector256.Sum(a3 + b3);
    }

    /// <summary>One token's term of a q4_0 block pair, as <see cref="Q4_0{TI}"/> computes it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Q4_0Token<TI>(Vector256<byte> lo, Vector256<byte> hi, Vector256<float> sc, sbyte* qp, float* dp, int* zp, Vector256<float> acc)
        where TI : struct, IIsa =>
        Fma.MultiplyAdd(Cvt(PairDotSplit<TI>(Vector256.Load(zp), lo, hi, qp)), sc * Vector256.Load(dp), acc);

    /// <summary>One token's term of a q4_0 row's last, unpaired block, as <see cref="Q4_0{TI}"/> computes it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Q4_0Odd<TI>(Vector256<byte> nib, float dw, in ActRow a, int b, Vector256<float> acc) where TI : struct, IIsa =>
        Fma.MultiplyAdd(Cvt(DotUS<TI>(Vector256.CreateScalar(a.Z[b]), nib, Vector256.Load(a.Q + 32 * b))), Vector256.Create(dw * a.D[b]), acc);

    /// <summary>
    /// <see cref="Q4_0x4{TI}"/> for eight tokens (needs AVX-512's 32 vector registers), over block pairs [p0, p1) of
    /// the row at w: the accumulators start at zero when <paramref name="first"/>, else from <paramref name="acc"/>
    /// (a store and a load are exact), and are stored back there unless <paramref name="last"/>, which finishes the row
    /// (the unpaired block, the sums) into y. Column tiles keep eight tokens' activations in L1 for long rows.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Q4_0x8<TI>(byte* w, ActRow* r, int p0, int p1, int nb, bool first, bool last, Vector256<float>* acc, float* y, long ys)
        where TI : struct, IIsa
    {
        Vector256<float> a0 = first ? default : acc[0], a1 = first ? default : acc[1], a2 = first ? default : acc[2], a3 = first ? default : acc[3], a4 = first ? default : acc[4], a5 = first ? default : acc[5], a6 = first ? default : acc[6], a7 = first ? default : acc[7], b0 = first ? default : acc[8], b1 = first ? default : acc[9], b2 = first ? default : acc[10], b3 = first ? default : acc[11], b4 = first ? default : acc[12], b5 = first ? default : acc[13], b6 = first ? default : acc[14], b7 = first ? default : acc[15];
        sbyte* q0 = r[0].QP, q1 = r[1].QP, q2 = r[2].QP, q3 = r[3].QP, q4 = r[4].QP, q5 = r[5].QP, q6 = r[6].QP, q7 = r[7].QP;
        float* d0 = r[0].DP, d1 = r[1].DP, d2 = r[2].DP, d3 = r[3].DP, d4 = r[4].DP, d5 = r[5].DP, d6 = r[6].DP, d7 = r[7].DP;
        int* z0 = r[0].ZP, z1 = r[1].ZP, z2 = r[2].ZP, z3 = r[3].ZP, z4 = r[4].ZP, z5 = r[5].ZP, z6 = r[6].ZP, z7 = r[7].ZP;
        const int B = BlockLayout.Q4_0.Bytes, Qs = BlockLayout.Q4_0.Qs;
        float* f16 = F16;
        byte* wp = w + 2L * B * p0;
        for (int p = p0; p < p1; p++, wp += 2 * B)
        {
            BlockDecode.SplitNibbles(Vector256.Create(Vector128.Load(wp + Qs), Vector128.Load(wp + B + Qs)), out var lo, out var hi);
            var sc = PairScale(f16, wp, wp + B);
            long o = 64L * p, v = 8L * p;
            // The one-token kernel alternates its two accumulators by pair parity.
            if ((p & 1) == 0)
            {
                a0 = Q4_0Token<TI>(lo, hi, sc, q0 + o, d0 + v, z0 + v, a0);
                a1 = Q4_0Token<TI>(lo, hi, sc, q1 + o, d1 + v, z1 + v, a1);
                a2 = Q4_0Token<TI>(lo, hi, sc, q2 + o, d2 + v, z2 + v, a2);
                a3 = Q4_0Token<TI>(lo, hi, sc, q3 + o, d3 + v, z3 + v, a3);
                a4 = Q4_0Token<TI>(lo, hi, sc, q4 + o, d4 + v, z4 + v, a4);
                a5 = Q4_0Token<TI>(lo, hi, sc, q5 + o, d5 + v, z5 + v, a5);
                a6 = Q4_0Token<TI>(lo, hi, sc, q6 + o, d6 + v, z6 + v, a6);
                a7 = Q4_0Token<TI>(lo, hi, sc, q7 + o, d7 + v, z7 + v, a7);
            }
            else
            {
                b0 = Q4_0Token<TI>(lo, hi, sc, q0 + o, d0 + v, z0 + v, b0);
                b1 = Q4_0Token<TI>(lo, hi, sc, q1 + o, d1 + v, z1 + v, b1);
                b2 = Q4_0Token<TI>(lo, hi, sc, q2 + o, d2 + v, z2 + v, b2);
                b3 = Q4_0Token<TI>(lo, hi, sc, q3 + o, d3 + v, z3 + v, b3);
                b4 = Q4_0Token<TI>(lo, hi, sc, q4 + o, d4 + v, z4 + v, b4);
                b5 = Q4_0Token<TI>(lo, hi, sc, q5 + o, d5 + v, z5 + v, b5);
                b6 = Q4_0Token<TI>(lo, hi, sc, q6 + o, d6 + v, z6 + v, b6);
                b7 = Q4_0Token<TI>(lo, hi, sc, q7 + o, d7 + v, z7 + v, b7);
            }
        }
        if (!last)
        {
            acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3; acc[4] = a4; acc[5] = a5; acc[6] = a6; acc[7] = a7; acc[8] = b0; acc[9] = b1; acc[10] = b2; acc[11] = b3; acc[12] = b4; acc[13] = b5; acc[14] = b6; acc[15] = b7;
            return;
        }
        if ((nb & 1) != 0)
        {
            int b = nb - 1;
            var nib = BlockDecode.Nibbles(wp + Qs);
            float dw = f16[*(ushort*)wp];
            a0 = Q4_0Odd<TI>(nib, dw, r[0], b, a0);
            a1 = Q4_0Odd<TI>(nib, dw, r[1], b, a1);
            a2 = Q4_0Odd<TI>(nib, dw, r[2], b, a2);
            a3 = Q4_0Odd<TI>(nib, dw, r[3], b, a3);
            a4 = Q4_0Odd<TI>(nib, dw, r[4], b, a4);
            a5 = Q4_0Odd<TI>(nib, dw, r[5], b, a5);
            a6 = Q4_0Odd<TI>(nib, dw, r[6], b, a6);
            a7 = Q4_0Odd<TI>(nib, dw, r[7], b, a7);
        }
        y[0 * ys] = Vector256.Sum(a0 + b0);
        y[1 * ys] = Vector256.Sum(a1 + b1);
        y[2 * ys] = Vector256.Sum(a2 + b2);
        y[3 * ys] = Vector256.Sum(a3 + b3);
        y[4 * ys] = Vector256.Sum(a4 + b4);
        y[5 * ys] = Vector256.Sum(a5 + b5);
        y[6 * ys] = Vector256.Sum(a6 + b6);
        y[7 * ys] = Vector256.Sum(a7 + b7);
    }

    // ---------------------------------------------------------------- q5_0 × q8_0

    private static float RefQ5_0(byte* w, in ActRow a, int cols)
    {
        float sum = 0;
        for (int b = 0; b < cols / BlockLayout.QK; b++)
        {
            byte* blk = w + BlockLayout.Q5_0.Bytes * b;
            uint qh = *(uint*)(blk + BlockLayout.Q5_0.Qh);
            var qs = new ReadOnlySpan<byte>(blk + BlockLayout.Q5_0.Qs, BlockLayout.QK / 2);
            sbyte* y = a.Q + BlockLayout.QK * b;
            int s = 0;
            for (int j = 0; j < BlockLayout.QK; j++) s += (BlockDecode.Q5Quant(qs, qh, j) - 16) * y[j];
            sum += s * (H(blk + BlockLayout.Q5_0.D) * a.D[b]);
        }
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Q5_0<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa
    {
        // As q4_0 with the 5th bit: q in 0..31, Σ (q-16)·a = Σ q·a - 16·Σa.
        var acc0 = Vector256<float>.Zero;
        var acc1 = Vector256<float>.Zero;
        const int B = BlockLayout.Q5_0.Bytes, Qh = BlockLayout.Q5_0.Qh, Qs = BlockLayout.Q5_0.Qs;
        int nb = cols / BlockLayout.QK, np = nb / 2;
        sbyte* qp = a.QP;
        float* dp = a.DP;
        int* zp = a.ZP;
        float* f16 = F16;
        for (int p = 0; p < np; p++, w += 2 * B, qp += 64, dp += 8, zp += 8)
        {
            BlockDecode.PairHighBits(*(uint*)(w + Qh), *(uint*)(w + B + Qh), out var lo, out var hi);
            var raw = Vector256.Create(Vector128.Load(w + Qs), Vector128.Load(w + B + Qs));
            var s = PairDot<TI>(Vector256.Load(zp), raw, hi, lo, qp);
            var sc = PairScale(f16, w, w + B) * Vector256.Load(dp);
            if ((p & 1) == 0) acc0 = Fma.MultiplyAdd(Cvt(s), sc, acc0);
            else acc1 = Fma.MultiplyAdd(Cvt(s), sc, acc1);
        }
        if ((nb & 1) != 0)
        {
            int b = nb - 1;
            var s = DotUS<TI>(Vector256.CreateScalar(a.Z[b]), BlockDecode.Q5Quants(w + Qs, *(uint*)(w + Qh)), Vector256.Load(a.Q + BlockLayout.QK * b));
            acc0 = Fma.MultiplyAdd(Cvt(s), Vector256.Create(f16[*(ushort*)w] * a.D[b]), acc0);
        }
        return Vector256.Sum(acc0 + acc1);
    }

    // ---------------------------------------------------------------- q4_1 × q8_1

    private static float RefQ4_1(byte* w, in ActRow a, int cols)
    {
        float sum = 0;
        for (int b = 0; b < cols / BlockLayout.QK; b++)
        {
            byte* blk = w + BlockLayout.Q4_1.Bytes * b;
            byte* qs = blk + BlockLayout.Q4_1.Qs;
            sbyte* y = a.Q + BlockLayout.QK * b;
            int s = 0;
            for (int j = 0; j < 16; j++) s += (qs[j] & 0xF) * y[j] + (qs[j] >> 4) * y[j + 16];
            // Σ (d·q + m)·(da·a) = d·da·Σ q·a + m·(da·Σa), the last factor being q8_1's s.
            sum += s * (H(blk + BlockLayout.Q4_1.D) * a.D[b]) + H(blk + BlockLayout.Q4_1.M) * a.S[b];
        }
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Q4_1<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa
    {
        var acc0 = Vector256<float>.Zero;
        var acc1 = Vector256<float>.Zero;
        float ms0 = 0, ms1 = 0;
        const int B = BlockLayout.Q4_1.Bytes, M = BlockLayout.Q4_1.M, Qs = BlockLayout.Q4_1.Qs;
        int nb = cols / BlockLayout.QK, np = nb / 2;
        sbyte* qp = a.QP;
        float* dp = a.DP, sa = a.S;
        float* f16 = F16;
        for (int p = 0; p < np; p++, w += 2 * B, qp += 64, dp += 8, sa += 2)
        {
            var raw = Vector256.Create(Vector128.Load(w + Qs), Vector128.Load(w + B + Qs));
            var s = PairDot<TI>(Vector256<int>.Zero, raw, Vector256<byte>.Zero, Vector256<byte>.Zero, qp);
            var sc = PairScale(f16, w, w + B) * Vector256.Load(dp);
            if ((p & 1) == 0) acc0 = Fma.MultiplyAdd(Cvt(s), sc, acc0);
            else acc1 = Fma.MultiplyAdd(Cvt(s), sc, acc1);
            ms0 += f16[*(ushort*)(w + M)] * sa[0];
            ms1 += f16[*(ushort*)(w + B + M)] * sa[1];
        }
        if ((nb & 1) != 0)
        {
            int b = nb - 1;
            var s = DotUS<TI>(Vector256<int>.Zero, BlockDecode.Nibbles(w + Qs), Vector256.Load(a.Q + BlockLayout.QK * b));
            acc0 = Fma.MultiplyAdd(Cvt(s), Vector256.Create(f16[*(ushort*)w] * a.D[b]), acc0);
            ms0 += f16[*(ushort*)(w + M)] * a.S[b];
        }
        return Vector256.Sum(acc0 + acc1) + (ms0 + ms1);
    }

    // ---------------------------------------------------------------- q5_1 × q8_1

    private static float RefQ5_1(byte* w, in ActRow a, int cols)
    {
        float sum = 0;
        for (int b = 0; b < cols / BlockLayout.QK; b++)
        {
            byte* blk = w + BlockLayout.Q5_1.Bytes * b;
            uint qh = *(uint*)(blk + BlockLayout.Q5_1.Qh);
            var qs = new ReadOnlySpan<byte>(blk + BlockLayout.Q5_1.Qs, BlockLayout.QK / 2);
            sbyte* y = a.Q + BlockLayout.QK * b;
            int s = 0;
            for (int j = 0; j < BlockLayout.QK; j++) s += BlockDecode.Q5Quant(qs, qh, j) * y[j];
            sum += s * (H(blk + BlockLayout.Q5_1.D) * a.D[b]) + H(blk + BlockLayout.Q5_1.M) * a.S[b];
        }
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Q5_1<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa
    {
        var acc0 = Vector256<float>.Zero;
        var acc1 = Vector256<float>.Zero;
        float ms0 = 0, ms1 = 0;
        const int B = BlockLayout.Q5_1.Bytes, M = BlockLayout.Q5_1.M, Qh = BlockLayout.Q5_1.Qh, Qs = BlockLayout.Q5_1.Qs;
        int nb = cols / BlockLayout.QK, np = nb / 2;
        sbyte* qp = a.QP;
        float* dp = a.DP, sa = a.S;
        float* f16 = F16;
        for (int p = 0; p < np; p++, w += 2 * B, qp += 64, dp += 8, sa += 2)
        {
            BlockDecode.PairHighBits(*(uint*)(w + Qh), *(uint*)(w + B + Qh), out var lo, out var hi);
            var raw = Vector256.Create(Vector128.Load(w + Qs), Vector128.Load(w + B + Qs));
            var s = PairDot<TI>(Vector256<int>.Zero, raw, hi, lo, qp);
            var sc = PairScale(f16, w, w + B) * Vector256.Load(dp);
            if ((p & 1) == 0) acc0 = Fma.MultiplyAdd(Cvt(s), sc, acc0);
            else acc1 = Fma.MultiplyAdd(Cvt(s), sc, acc1);
            ms0 += f16[*(ushort*)(w + M)] * sa[0];
            ms1 += f16[*(ushort*)(w + B + M)] * sa[1];
        }
        if ((nb & 1) != 0)
        {
            int b = nb - 1;
            var s = DotUS<TI>(Vector256<int>.Zero, BlockDecode.Q5Quants(w + Qs, *(uint*)(w + Qh)), Vector256.Load(a.Q + BlockLayout.QK * b));
            acc0 = Fma.MultiplyAdd(Cvt(s), Vector256.Create(f16[*(ushort*)w] * a.D[b]), acc0);
            ms0 += f16[*(ushort*)(w + M)] * a.S[b];
        }
        return Vector256.Sum(acc0 + acc1) + (ms0 + ms1);
    }

    // ---------------------------------------------------------------- k-quant helpers

    /// <summary>Shuffle selecting the int16 pair-scale for sub-blocks (2p, 2p+1): bytes [2p]×8 then [2p+1]×8.</summary>
    private static Vector128<byte> PairShuffle0 => Vector128.Create((byte)0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);

    /// <summary>
    /// The multiplier vector for the int16 products of a 32-element group spanning two 16-element sub-blocks:
    /// lanes 0..7 (elements 0..15) get scale s, lanes 8..15 get s+1. <paramref name="shuf"/> selects (s, s+1).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<short> PairScales(Vector128<sbyte> scales, Vector128<byte> shuf) =>
        Avx2.ConvertToVector256Int16(Ssse3.Shuffle(scales, shuf.AsSByte()));

    /// <summary>
    /// acc + maddubs then madd with the scales: Σ over each 4 elements of q·a·scale, as int32. VNNI fuses the
    /// madd and the add (vpdpwssd).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> ScaledDot<TI>(Vector256<int> acc, Vector256<byte> q, sbyte* y, Vector256<short> scale) where TI : struct, IIsa
    {
        var p = Avx2.MultiplyAddAdjacent(q, Vector256.Load(y));
        return TI.Vnni ? AvxVnni.MultiplyWideningAndAdd(acc, p, scale) : Avx2.Add(acc, Avx2.MultiplyAddAdjacent(p, scale));
    }

    // ---------------------------------------------------------------- q2_K × q8_K

    private static float RefQ2_K(byte* w, in ActRow a, int cols)
    {
        float sum = 0;
        for (int i = 0; i < cols / BlockLayout.QK_K; i++)
        {
            byte* blk = w + BlockLayout.Q2_K.Bytes * i;
            byte* scales = blk + BlockLayout.Q2_K.Scales;
            var qs = new ReadOnlySpan<byte>(blk + BlockLayout.Q2_K.Qs, BlockLayout.QK_K / 4);
            sbyte* y = a.Q + BlockLayout.QK_K * i;
            short* bs = a.BSums + 16 * i;
            int isum = 0, msum = 0;
            for (int s = 0; s < BlockLayout.QK_K / BlockLayout.Q2_K.SubBlock; s++)
            {
                msum += BlockDecode.Q2_KMin(scales[s]) * bs[s];
                int ps = 0;
                for (int e = BlockLayout.Q2_K.SubBlock * s; e < BlockLayout.Q2_K.SubBlock * (s + 1); e++)
                    ps += BlockDecode.Q2Bits(qs, e) * y[e];
                isum += BlockDecode.Q2_KScale(scales[s]) * ps;
            }
            sum += a.D[i] * H(blk + BlockLayout.Q2_K.D) * isum - a.D[i] * H(blk + BlockLayout.Q2_K.DMin) * msum;
        }
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Q2_K<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa
    {
        var acc = Vector256<float>.Zero;
        sbyte* y = a.Q;
        float* da = a.D;
        short* bs = a.BSums;
        for (int i = 0; i < cols / BlockLayout.QK_K; i++, w += BlockLayout.Q2_K.Bytes, y += BlockLayout.QK_K, bs += 16)
        {
            // The 16 scale bytes: 4-bit scales in the low nibbles, mins in the high nibbles.
            var raw = Vector128.Load(w + BlockLayout.Q2_K.Scales);
            var scales = (raw & Vector128.Create((byte)0xF)).AsSByte();
            var mins = Avx2.ConvertToVector256Int16((raw.AsUInt16() >> 4).AsByte() & Vector128.Create((byte)0xF));
            var msum = Avx2.MultiplyAddAdjacent(mins.AsInt16(), Vector256.Load(bs));
            var s0 = Vector256<int>.Zero;
            var s1 = Vector256<int>.Zero;
            var shuf = PairShuffle0;
            Q2Half<TI>(Vector256.Load(w + BlockLayout.Q2_K.Qs), y, scales, ref shuf, ref s0, ref s1);
            Q2Half<TI>(Vector256.Load(w + BlockLayout.Q2_K.Qs + 32), y + 128, scales, ref shuf, ref s0, ref s1);
            acc = Fma.MultiplyAdd(Cvt(s0 + s1), Vector256.Create(da[i] * H(w + BlockLayout.Q2_K.D)), acc);
            acc = Fma.MultiplyAdd(Cvt(msum), Vector256.Create(-da[i] * H(w + BlockLayout.Q2_K.DMin)), acc);
        }
        return Vector256.Sum(acc);
    }

    /// <summary>One 128-element half of a q2_K block: plane k (bits 2k..2k+1) holds elements 32k..32k+31.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Q2Half<TI>(Vector256<byte> q2, sbyte* y, Vector128<sbyte> scales, ref Vector128<byte> shuf,
        ref Vector256<int> s0, ref Vector256<int> s1) where TI : struct, IIsa
    {
        var inc = Vector128.Create((byte)2);
        s0 = ScaledDot<TI>(s0, BlockDecode.Q2Plane(q2, 0), y, PairScales(scales, shuf)); shuf += inc;
        s1 = ScaledDot<TI>(s1, BlockDecode.Q2Plane(q2, 1), y + 32, PairScales(scales, shuf)); shuf += inc;
        s0 = ScaledDot<TI>(s0, BlockDecode.Q2Plane(q2, 2), y + 64, PairScales(scales, shuf)); shuf += inc;
        s1 = ScaledDot<TI>(s1, BlockDecode.Q2Plane(q2, 3), y + 96, PairScales(scales, shuf)); shuf += inc;
    }

    // ---------------------------------------------------------------- q3_K × q8_K

    private static float RefQ3_K(byte* w, in ActRow a, int cols)
    {
        float sum = 0;
        for (int i = 0; i < cols / BlockLayout.QK_K; i++)
        {
            byte* blk = w + BlockLayout.Q3_K.Bytes * i;
            var block = new ReadOnlySpan<byte>(blk, BlockLayout.Q3_K.Bytes);
            var scales = BlockDecode.ScalesQ3_K(block.Slice(BlockLayout.Q3_K.Scales, BlockLayout.KScaleSize));
            sbyte* y = a.Q + BlockLayout.QK_K * i;
            int isum = 0;
            for (int s = 0; s < BlockLayout.QK_K / BlockLayout.Q3_K.SubBlock; s++)
            {
                int ps = 0;
                for (int e = BlockLayout.Q3_K.SubBlock * s; e < BlockLayout.Q3_K.SubBlock * (s + 1); e++)
                    ps += (BlockDecode.Q3_KQuant(block, e) - 4) * y[e];
                isum += scales.GetElement(s) * ps;
            }
            sum += a.D[i] * H(blk + BlockLayout.Q3_K.D) * isum;
        }
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Q3_K<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa
    {
        var acc = Vector256<float>.Zero;
        sbyte* y = a.Q;
        float* da = a.D;
        short* bs = a.BSums;
        for (int i = 0; i < cols / BlockLayout.QK_K; i++, w += BlockLayout.Q3_K.Bytes, y += BlockLayout.QK_K, bs += 16)
        {
            var scales = BlockDecode.ScalesQ3_K(w + BlockLayout.Q3_K.Scales);
            // Σ (q-4)·a·sc = Σ q·a·sc - 4·Σ_s sc_s·bsum_s with q = low | high<<2 in 0..7.
            var corr = Avx2.MultiplyAddAdjacent(Avx2.ConvertToVector256Int16(scales), Vector256.Load(bs));
            var s0 = Vector256<int>.Zero - Avx2.ShiftLeftLogical(corr, 2);
            var s1 = Vector256<int>.Zero;
            var hm = Vector256.Load(w + BlockLayout.Q3_K.HMask);
            var shuf = PairShuffle0;
            var q3 = Vector256.Load(w + BlockLayout.Q3_K.Qs);
            var inc = Vector128.Create((byte)2);
            // Half 0 uses hmask bits 0..3, half 1 bits 4..7, each moved to bit 2 (constant shifts once inlined).
            s0 = ScaledDot<TI>(s0, BlockDecode.Q3_KPlane(q3, hm, 0, 0), y, PairScales(scales, shuf)); shuf += inc;
            s1 = ScaledDot<TI>(s1, BlockDecode.Q3_KPlane(q3, hm, 0, 1), y + 32, PairScales(scales, shuf)); shuf += inc;
            s0 = ScaledDot<TI>(s0, BlockDecode.Q3_KPlane(q3, hm, 0, 2), y + 64, PairScales(scales, shuf)); shuf += inc;
            s1 = ScaledDot<TI>(s1, BlockDecode.Q3_KPlane(q3, hm, 0, 3), y + 96, PairScales(scales, shuf)); shuf += inc;
            q3 = Vector256.Load(w + BlockLayout.Q3_K.Qs + 32);
            s0 = ScaledDot<TI>(s0, BlockDecode.Q3_KPlane(q3, hm, 1, 0), y + 128, PairScales(scales, shuf)); shuf += inc;
            s1 = ScaledDot<TI>(s1, BlockDecode.Q3_KPlane(q3, hm, 1, 1), y + 160, PairScales(scales, shuf)); shuf += inc;
            s0 = ScaledDot<TI>(s0, BlockDecode.Q3_KPlane(q3, hm, 1, 2), y + 192, PairScales(scales, shuf)); shuf += inc;
            s1 = ScaledDot<TI>(s1, BlockDecode.Q3_KPlane(q3, hm, 1, 3), y + 224, PairScales(scales, shuf));
            acc = Fma.MultiplyAdd(Cvt(s0 + s1), Vector256.Create(da[i] * H(w + BlockLayout.Q3_K.D)), acc);
        }
        return Vector256.Sum(acc);
    }

    // ---------------------------------------------------------------- q4_K × q8_K

    private static float RefQ4_K(byte* w, in ActRow a, int cols)
    {
        float sum = 0;
        for (int i = 0; i < cols / BlockLayout.QK_K; i++)
        {
            byte* blk = w + BlockLayout.Q4_K.Bytes * i;
            var scales = new ReadOnlySpan<byte>(blk + BlockLayout.Q4_K.Scales, BlockLayout.KScaleSize);
            byte* qs = blk + BlockLayout.Q4_K.Qs;
            sbyte* y = a.Q + BlockLayout.QK_K * i;
            short* bs = a.BSums + 16 * i;
            int isum = 0, msum = 0;
            for (int c = 0; c < 4; c++)
            {
                BlockDecode.ScaleMinK4(scales, 2 * c, out int sc1, out int m1);
                BlockDecode.ScaleMinK4(scales, 2 * c + 1, out int sc2, out int m2);
                int p1 = 0, p2 = 0;
                for (int l = 0; l < 32; l++)
                {
                    p1 += (qs[32 * c + l] & 0xF) * y[64 * c + l];
                    p2 += (qs[32 * c + l] >> 4) * y[64 * c + 32 + l];
                }
                isum += sc1 * p1 + sc2 * p2;
                msum += m1 * (bs[4 * c] + bs[4 * c + 1]) + m2 * (bs[4 * c + 2] + bs[4 * c + 3]);
            }
            sum += a.D[i] * H(blk + BlockLayout.Q4_K.D) * isum - a.D[i] * H(blk + BlockLayout.Q4_K.DMin) * msum;
        }
        return sum;
    }

    /// <summary>Shuffle broadcasting int16 lane 0 (bytes 0,1) to all lanes; add 0x0202 per lane index.</summary>
    private static Vector256<byte> WordShuffle0 => Vector256.Create((ushort)0x0100).AsByte();

    /// <summary>
    /// A q4_K superblock's eight 6-bit scales as int16 words (both lanes, for the word shuffles of the chunks) and its
    /// mins, each duplicated to the two bsums of its 32 elements (Σ_j m_j·(bsum[2j] + bsum[2j+1]) is one vpmaddwd).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Q4_KScalesMins(byte* w, out Vector256<byte> scales, out Vector256<short> mins)
    {
        BlockDecode.ScalesMinsK4(w + BlockLayout.Q4_K.Scales, out ulong sc, out ulong mn);
        var mb = Vector128.CreateScalar(mn).AsByte();
        mins = Avx2.ConvertToVector256Int16(Sse2.UnpackLow(mb, mb)).AsInt16();
        var sc16 = Sse41.ConvertToVector128Int16(Vector128.CreateScalar(sc).AsByte());
        scales = Vector256.Create(sc16, sc16).AsByte();
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Q4_K<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa
    {
        var acc = Vector256<float>.Zero;
        sbyte* y = a.Q;
        float* da = a.D;
        short* bs = a.BSums;
        for (int i = 0; i < cols / BlockLayout.QK_K; i++, w += BlockLayout.Q4_K.Bytes, y += BlockLayout.QK_K, bs += 16)
        {
            Q4_KScalesMins(w, out var scales, out var mins);
            var msum = Avx2.MultiplyAddAdjacent(mins, Vector256.Load(bs));
            var shuf = WordShuffle0;
            var inc = Vector256.Create((ushort)0x0202).AsByte();
            var s0 = Vector256<int>.Zero;
            var s1 = Vector256<int>.Zero;
            for (int c = 0; c < 4; c++)
            {
                var q4 = Vector256.Load(w + BlockLayout.Q4_K.Qs + 32 * c);
                var sLo = Avx2.Shuffle(scales, shuf).AsInt16();
                shuf += inc;
                var sHi = Avx2.Shuffle(scales, shuf).AsInt16();
                shuf += inc;
                // Split after the shuffles: the instruction order the JIT keeps, and the one that measured fastest.
                BlockDecode.SplitNibbles(q4, out var lo, out var hi);
                s0 = ScaledDot<TI>(s0, lo, y + 64 * c, sLo);
                s1 = ScaledDot<TI>(s1, hi, y + 64 * c + 32, sHi);
            }
            acc = Fma.MultiplyAdd(Cvt(s0 + s1), Vector256.Create(da[i] * H(w + BlockLayout.Q4_K.D)), acc);
            acc = Fma.MultiplyAdd(Cvt(msum), Vector256.Create(-da[i] * H(w + BlockLayout.Q4_K.DMin)), acc);
        }
        return Vector256.Sum(acc);
    }

    /// <summary>
    /// <see cref="Q4_K{TI}"/> for eight tokens (needs AVX-512's 32 vector registers): each superblock's scales, mins and
    /// nibbles are decoded once for eight tokens. Every token's result is the one-token kernel's: its two int32
    /// accumulators are one here (integer sums are exact in any order) and its float steps are the same.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Q4_Kx8<TI>(byte* w, ActRow* r, int cols, float* y, long ys) where TI : struct, IIsa
    {
        Vector256<float> f0 = default, f1 = default, f2 = default, f3 = default, f4 = default, f5 = default, f6 = default, f7 = default;
        sbyte* y0 = r[0].Q, y1 = r[1].Q, y2 = r[2].Q, y3 = r[3].Q, y4 = r[4].Q, y5 = r[5].Q, y6 = r[6].Q, y7 = r[7].Q;
        float* d0 = r[0].D, d1 = r[1].D, d2 = r[2].D, d3 = r[3].D, d4 = r[4].D, d5 = r[5].D, d6 = r[6].D, d7 = r[7].D;
        short* b0 = r[0].BSums, b1 = r[1].BSums, b2 = r[2].BSums, b3 = r[3].BSums, b4 = r[4].BSums, b5 = r[5].BSums, b6 = r[6].BSums, b7 = r[7].BSums;
        var inc = Vector256.Create((ushort)0x0202).AsByte();
        for (int i = 0; i < cols / BlockLayout.QK_K; i++, w += BlockLayout.Q4_K.Bytes)
        {
            Q4_KScalesMins(w, out var scales, out var mins);
            var shuf = WordShuffle0;
            float d = H(w + BlockLayout.Q4_K.D), dmin = H(w + BlockLayout.Q4_K.DMin);
            long o = (long)BlockLayout.QK_K * i;
            Vector256<int> s0 = default, s1 = default, s2 = default, s3 = default, s4 = default, s5 = default, s6 = default, s7 = default;
            for (int c = 0; c < 4; c++)
            {
                var q4 = Vector256.Load(w + BlockLayout.Q4_K.Qs + 32 * c);
                var sLo = Avx2.Shuffle(scales, shuf).AsInt16();
                shuf += inc;
                var sHi = Avx2.Shuffle(scales, shuf).AsInt16();
                shuf += inc;
                BlockDecode.SplitNibbles(q4, out var lo, out var hi);
                long oc = o + 64 * c;
                s0 = ScaledDot<TI>(ScaledDot<TI>(s0, lo, y0 + oc, sLo), hi, y0 + oc + 32, sHi);
                s1 = ScaledDot<TI>(ScaledDot<TI>(s1, lo, y1 + oc, sLo), hi, y1 + oc + 32, sHi);
                s2 = ScaledDot<TI>(ScaledDot<TI>(s2, lo, y2 + oc, sLo), hi, y2 + oc + 32, sHi);
                s3 = ScaledDot<TI>(ScaledDot<TI>(s3, lo, y3 + oc, sLo), hi, y3 + oc + 32, sHi);
                s4 = ScaledDot<TI>(ScaledDot<TI>(s4, lo, y4 + oc, sLo), hi, y4 + oc + 32, sHi);
                s5 = ScaledDot<TI>(ScaledDot<TI>(s5, lo, y5 + oc, sLo), hi, y5 + oc + 32, sHi);
                s6 = ScaledDot<TI>(ScaledDot<TI>(s6, lo, y6 + oc, sLo), hi, y6 + oc + 32, sHi);
                s7 = ScaledDot<TI>(ScaledDot<TI>(s7, lo, y7 + oc, sLo), hi, y7 + oc + 32, sHi);
            }
            f0 = Q4_KFinish(f0, s0, mins, b0 + 16 * i, d0[i], d, dmin);
            f1 = Q4_KFinish(f1, s1, mins, b1 + 16 * i, d1[i], d, dmin);
            f2 = Q4_KFinish(f2, s2, mins, b2 + 16 * i, d2[i], d, dmin);
            f3 = Q4_KFinish(f3, s3, mins, b3 + 16 * i, d3[i], d, dmin);
            f4 = Q4_KFinish(f4, s4, mins, b4 + 16 * i, d4[i], d, dmin);
            f5 = Q4_KFinish(f5, s5, mins, b5 + 16 * i, d5[i], d, dmin);
            f6 = Q4_KFinish(f6, s6, mins, b6 + 16 * i, d6[i], d, dmin);
            f7 = Q4_KFinish(f7, s7, mins, b7 + 16 * i, d7[i], d, dmin);
        }
        y[0 * ys] = Vector256.Sum(f0);
        y[1 * ys] = Vector256.Sum(f1);
        y[2 * ys] = Vector256.Sum(f2);
        y[3 * ys] = Vector256.Sum(f3);
        y[4 * ys] = Vector256.Sum(f4);
        y[5 * ys] = Vector256.Sum(f5);
        y[6 * ys] = Vector256.Sum(f6);
        y[7 * ys] = Vector256.Sum(f7);
    }

    /// <summary>One token's float steps for a q4_K superblock, as <see cref="Q4_K{TI}"/> does them: the scaled sums, then the mins.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Q4_KFinish(Vector256<float> acc, Vector256<int> s, Vector256<short> mins, short* bs, float da, float d, float dmin)
    {
        acc = Fma.MultiplyAdd(Cvt(s), Vector256.Create(da * d), acc);
        return Fma.MultiplyAdd(Cvt(Avx2.MultiplyAddAdjacent(mins, Vector256.Load(bs))), Vector256.Create(-da * dmin), acc);
    }

    // ---------------------------------------------------------------- q5_K × q8_K

    private static float RefQ5_K(byte* w, in ActRow a, int cols)
    {
        float sum = 0;
        for (int i = 0; i < cols / BlockLayout.QK_K; i++)
        {
            byte* blk = w + BlockLayout.Q5_K.Bytes * i;
            var scales = new ReadOnlySpan<byte>(blk + BlockLayout.Q5_K.Scales, BlockLayout.KScaleSize);
            byte* qh = blk + BlockLayout.Q5_K.Qh;
            byte* qs = blk + BlockLayout.Q5_K.Qs;
            sbyte* y = a.Q + BlockLayout.QK_K * i;
            short* bs = a.BSums + 16 * i;
            int isum = 0, msum = 0;
            for (int c = 0; c < 4; c++)
            {
                BlockDecode.ScaleMinK4(scales, 2 * c, out int sc1, out int m1);
                BlockDecode.ScaleMinK4(scales, 2 * c + 1, out int sc2, out int m2);
                int p1 = 0, p2 = 0;
                for (int l = 0; l < 32; l++)
                {
                    int q1 = (qs[32 * c + l] & 0xF) | BlockDecode.Q5_KHighBit(qh[l], 2 * c);
                    int q2 = (qs[32 * c + l] >> 4) | BlockDecode.Q5_KHighBit(qh[l], 2 * c + 1);
                    p1 += q1 * y[64 * c + l];
                    p2 += q2 * y[64 * c + 32 + l];
                }
                isum += sc1 * p1 + sc2 * p2;
                msum += m1 * (bs[4 * c] + bs[4 * c + 1]) + m2 * (bs[4 * c + 2] + bs[4 * c + 3]);
            }
            sum += a.D[i] * H(blk + BlockLayout.Q5_K.D) * isum - a.D[i] * H(blk + BlockLayout.Q5_K.DMin) * msum;
        }
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Q5_K<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa
    {
        var acc = Vector256<float>.Zero;
        sbyte* y = a.Q;
        float* da = a.D;
        short* bs = a.BSums;
        for (int i = 0; i < cols / BlockLayout.QK_K; i++, w += BlockLayout.Q5_K.Bytes, y += BlockLayout.QK_K, bs += 16)
        {
            BlockDecode.ScalesMinsK4(w + BlockLayout.Q5_K.Scales, out ulong sc, out ulong mn);
            var mb = Vector128.CreateScalar(mn).AsByte();
            var mins = Avx2.ConvertToVector256Int16(Sse2.UnpackLow(mb, mb));
            var msum = Avx2.MultiplyAddAdjacent(mins.AsInt16(), Vector256.Load(bs));
            var sc16 = Sse41.ConvertToVector128Int16(Vector128.CreateScalar(sc).AsByte());
            var scales = Vector256.Create(sc16, sc16).AsByte();
            var shuf = WordShuffle0;
            var qh = Vector256.Load(w + BlockLayout.Q5_K.Qh);
            var s0 = Vector256<int>.Zero;
            var s1 = Vector256<int>.Zero;
            // Chunk c takes its 5th bits from qh bits 2c (low nibbles) and 2c+1 (high): constant shifts.
            Q5KChunk<TI>(w + BlockLayout.Q5_K.Qs, qh, 0, y, scales, ref shuf, ref s0, ref s1);
            Q5KChunk<TI>(w + BlockLayout.Q5_K.Qs + 32, qh, 1, y + 64, scales, ref shuf, ref s0, ref s1);
            Q5KChunk<TI>(w + BlockLayout.Q5_K.Qs + 64, qh, 2, y + 128, scales, ref shuf, ref s0, ref s1);
            Q5KChunk<TI>(w + BlockLayout.Q5_K.Qs + 96, qh, 3, y + 192, scales, ref shuf, ref s0, ref s1);
            acc = Fma.MultiplyAdd(Cvt(s0 + s1), Vector256.Create(da[i] * H(w + BlockLayout.Q5_K.D)), acc);
            acc = Fma.MultiplyAdd(Cvt(msum), Vector256.Create(-da[i] * H(w + BlockLayout.Q5_K.DMin)), acc);
        }
        return Vector256.Sum(acc);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Q5KChunk<TI>(byte* qs, Vector256<byte> qh, int c, sbyte* y, Vector256<byte> scales, ref Vector256<byte> shuf,
        ref Vector256<int> s0, ref Vector256<int> s1) where TI : struct, IIsa
    {
        var inc = Vector256.Create((ushort)0x0202).AsByte();
        var q5 = Vector256.Load(qs);
        var sLo = Avx2.Shuffle(scales, shuf).AsInt16();
        shuf += inc;
        var sHi = Avx2.Shuffle(scales, shuf).AsInt16();
        shuf += inc;
        BlockDecode.SplitNibbles(q5, out var lo, out var hi);
        s0 = ScaledDot<TI>(s0, lo | BlockDecode.BitTo4(qh, 2 * c), y, sLo);
        s1 = ScaledDot<TI>(s1, hi | BlockDecode.BitTo4(qh, 2 * c + 1), y + 32, sHi);
    }

    // ---------------------------------------------------------------- q6_K × q8_K

    private static float RefQ6_K(byte* w, in ActRow a, int cols)
    {
        float sum = 0;
        for (int i = 0; i < cols / BlockLayout.QK_K; i++)
        {
            byte* blk = w + BlockLayout.Q6_K.Bytes * i;
            var block = new ReadOnlySpan<byte>(blk, BlockLayout.Q6_K.Bytes);
            sbyte* sc = (sbyte*)(blk + BlockLayout.Q6_K.Scales);
            sbyte* y = a.Q + BlockLayout.QK_K * i;
            int isum = 0;
            for (int s = 0; s < BlockLayout.QK_K / BlockLayout.Q6_K.SubBlock; s++)
            {
                int ps = 0;
                for (int e = BlockLayout.Q6_K.SubBlock * s; e < BlockLayout.Q6_K.SubBlock * (s + 1); e++)
                    ps += (BlockDecode.Q6_KQuant(block, e) - 32) * y[e];
                isum += sc[s] * ps;
            }
            sum += a.D[i] * H(blk + BlockLayout.Q6_K.D) * isum;
        }
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Q6_K<TI>(byte* w, in ActRow a, int cols) where TI : struct, IIsa
    {
        var acc = Vector256<float>.Zero;
        for (int i = 0; i < cols / BlockLayout.QK_K; i++)
        {
            byte* blk = w + BlockLayout.Q6_K.Bytes * i;
            sbyte* y = a.Q + BlockLayout.QK_K * i;
            var scales = Vector128.Load((sbyte*)(blk + BlockLayout.Q6_K.Scales));
            // Σ (q-32)·a·sc = Σ q·a·sc - 32·Σ_s sc_s·bsum_s with q in 0..63.
            var corr = Avx2.MultiplyAddAdjacent(Avx2.ConvertToVector256Int16(scales), Vector256.Load(a.BSums + 16 * i));
            var sumi = Vector256<int>.Zero - Avx2.ShiftLeftLogical(corr, 5);
            var sum1 = Vector256<int>.Zero;
            var shuf = PairShuffle0;
            for (int h = 0; h < 2; h++)
            {
                BlockDecode.Q6_KQuants(blk, h, out var q0, out var q1, out var q2, out var q3);
                sbyte* yh = y + 128 * h;
                var inc = Vector128.Create((byte)2);
                sumi = ScaledDot<TI>(sumi, q0, yh, PairScales(scales, shuf)); shuf += inc;
                sum1 = ScaledDot<TI>(sum1, q1, yh + 32, PairScales(scales, shuf)); shuf += inc;
                sumi = ScaledDot<TI>(sumi, q2, yh + 64, PairScales(scales, shuf)); shuf += inc;
                sum1 = ScaledDot<TI>(sum1, q3, yh + 96, PairScales(scales, shuf)); shuf += inc;
            }
            acc = Fma.MultiplyAdd(Cvt(sumi + sum1), Vector256.Create(a.D[i] * H(blk + BlockLayout.Q6_K.D)), acc);
        }
        return Vector256.Sum(acc);
    }
    /// <summary>
    /// <see cref="Q6_K{TI}"/> for eight tokens (needs AVX-512's 32 vector registers): each superblock's 6-bit quants
    /// and scales are decoded once for eight tokens; every token's result is the one-token kernel's (its two int32
    /// accumulators are one here: integer sums are exact in any order).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Q6_Kx8<TI>(byte* w, ActRow* r, int cols, float* y, long ys) where TI : struct, IIsa
    {
        Vector256<float> f0 = default, f1 = default, f2 = default, f3 = default, f4 = default, f5 = default, f6 = default, f7 = default;
        sbyte* y0 = r[0].Q, y1 = r[1].Q, y2 = r[2].Q, y3 = r[3].Q, y4 = r[4].Q, y5 = r[5].Q, y6 = r[6].Q, y7 = r[7].Q;
        float* d0 = r[0].D, d1 = r[1].D, d2 = r[2].D, d3 = r[3].D, d4 = r[4].D, d5 = r[5].D, d6 = r[6].D, d7 = r[7].D;
        short* b0 = r[0].BSums, b1 = r[1].BSums, b2 = r[2].BSums, b3 = r[3].BSums, b4 = r[4].BSums, b5 = r[5].BSums, b6 = r[6].BSums, b7 = r[7].BSums;
        var inc = Vector128.Create((byte)2);
        for (int i = 0; i < cols / BlockLayout.QK_K; i++)
        {
            byte* blk = w + BlockLayout.Q6_K.Bytes * i;
            var scales = Vector128.Load((sbyte*)(blk + BlockLayout.Q6_K.Scales));
            var scales16 = Avx2.ConvertToVector256Int16(scales);
            float d = H(blk + BlockLayout.Q6_K.D);
            var s0 = Vector256<int>.Zero - Avx2.ShiftLeftLogical(Avx2.MultiplyAddAdjacent(scales16, Vector256.Load(b0 + 16 * i)), 5);
            var s1 = Vector256<int>.Zero - Avx2.ShiftLeftLogical(Avx2.MultiplyAddAdjacent(scales16, Vector256.Load(b1 + 16 * i)), 5);
            var s2 = Vector256<int>.Zero - Avx2.ShiftLeftLogical(Avx2.MultiplyAddAdjacent(scales16, Vector256.Load(b2 + 16 * i)), 5);
            var s3 = Vector256<int>.Zero - Avx2.ShiftLeftLogical(Avx2.MultiplyAddAdjacent(scales16, Vector256.Load(b3 + 16 * i)), 5);
            var s4 = Vector256<int>.Zero - Avx2.ShiftLeftLogical(Avx2.MultiplyAddAdjacent(scales16, Vector256.Load(b4 + 16 * i)), 5);
            var s5 = Vector256<int>.Zero - Avx2.ShiftLeftLogical(Avx2.MultiplyAddAdjacent(scales16, Vector256.Load(b5 + 16 * i)), 5);
            var s6 = Vector256<int>.Zero - Avx2.ShiftLeftLogical(Avx2.MultiplyAddAdjacent(scales16, Vector256.Load(b6 + 16 * i)), 5);
            var s7 = Vector256<int>.Zero - Avx2.ShiftLeftLogical(Avx2.MultiplyAddAdjacent(scales16, Vector256.Load(b7 + 16 * i)), 5);
            var shuf = PairShuffle0;
            for (int h = 0; h < 2; h++)
            {
                BlockDecode.Q6_KQuants(blk, h, out var q0, out var q1, out var q2, out var q3);
                long o = 256L * i + 128 * h;
                var c0 = PairScales(scales, shuf); shuf += inc;
                s0 = ScaledDot<TI>(s0, q0, y0 + o + 0, c0);
                s1 = ScaledDot<TI>(s1, q0, y1 + o + 0, c0);
                s2 = ScaledDot<TI>(s2, q0, y2 + o + 0, c0);
                s3 = ScaledDot<TI>(s3, q0, y3 + o + 0, c0);
                s4 = ScaledDot<TI>(s4, q0, y4 + o + 0, c0);
                s5 = ScaledDot<TI>(s5, q0, y5 + o + 0, c0);
                s6 = ScaledDot<TI>(s6, q0, y6 + o + 0, c0);
                s7 = ScaledDot<TI>(s7, q0, y7 + o + 0, c0);
                var c1 = PairScales(scales, shuf); shuf += inc;
                s0 = ScaledDot<TI>(s0, q1, y0 + o + 32, c1);
                s1 = ScaledDot<TI>(s1, q1, y1 + o + 32, c1);
                s2 = ScaledDot<TI>(s2, q1, y2 + o + 32, c1);
                s3 = ScaledDot<TI>(s3, q1, y3 + o + 32, c1);
                s4 = ScaledDot<TI>(s4, q1, y4 + o + 32, c1);
                s5 = ScaledDot<TI>(s5, q1, y5 + o + 32, c1);
                s6 = ScaledDot<TI>(s6, q1, y6 + o + 32, c1);
                s7 = ScaledDot<TI>(s7, q1, y7 + o + 32, c1);
                var c2 = PairScales(scales, shuf); shuf += inc;
                s0 = ScaledDot<TI>(s0, q2, y0 + o + 64, c2);
                s1 = ScaledDot<TI>(s1, q2, y1 + o + 64, c2);
                s2 = ScaledDot<TI>(s2, q2, y2 + o + 64, c2);
                s3 = ScaledDot<TI>(s3, q2, y3 + o + 64, c2);
                s4 = ScaledDot<TI>(s4, q2, y4 + o + 64, c2);
                s5 = ScaledDot<TI>(s5, q2, y5 + o + 64, c2);
                s6 = ScaledDot<TI>(s6, q2, y6 + o + 64, c2);
                s7 = ScaledDot<TI>(s7, q2, y7 + o + 64, c2);
                var c3 = PairScales(scales, shuf); shuf += inc;
                s0 = ScaledDot<TI>(s0, q3, y0 + o + 96, c3);
                s1 = ScaledDot<TI>(s1, q3, y1 + o + 96, c3);
                s2 = ScaledDot<TI>(s2, q3, y2 + o + 96, c3);
                s3 = ScaledDot<TI>(s3, q3, y3 + o + 96, c3);
                s4 = ScaledDot<TI>(s4, q3, y4 + o + 96, c3);
                s5 = ScaledDot<TI>(s5, q3, y5 + o + 96, c3);
                s6 = ScaledDot<TI>(s6, q3, y6 + o + 96, c3);
                s7 = ScaledDot<TI>(s7, q3, y7 + o + 96, c3);
            }
            f0 = Fma.MultiplyAdd(Cvt(s0), Vector256.Create(d0[i] * d), f0);
            f1 = Fma.MultiplyAdd(Cvt(s1), Vector256.Create(d1[i] * d), f1);
            f2 = Fma.MultiplyAdd(Cvt(s2), Vector256.Create(d2[i] * d), f2);
            f3 = Fma.MultiplyAdd(Cvt(s3), Vector256.Create(d3[i] * d), f3);
            f4 = Fma.MultiplyAdd(Cvt(s4), Vector256.Create(d4[i] * d), f4);
            f5 = Fma.MultiplyAdd(Cvt(s5), Vector256.Create(d5[i] * d), f5);
            f6 = Fma.MultiplyAdd(Cvt(s6), Vector256.Create(d6[i] * d), f6);
            f7 = Fma.MultiplyAdd(Cvt(s7), Vector256.Create(d7[i] * d), f7);
        }
        y[0 * ys] = Vector256.Sum(f0);
        y[1 * ys] = Vector256.Sum(f1);
        y[2 * ys] = Vector256.Sum(f2);
        y[3 * ys] = Vector256.Sum(f3);
        y[4 * ys] = Vector256.Sum(f4);
        y[5 * ys] = Vector256.Sum(f5);
        y[6 * ys] = Vector256.Sum(f6);
        y[7 * ys] = Vector256.Sum(f7);
    }

}
