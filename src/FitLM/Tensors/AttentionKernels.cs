using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace FitLM.Tensors;

/// <summary>
/// The inner loops of attention over one tile of 32 key/value positions (<see cref="Tile"/>): the scores of a query
/// against the tile's keys and the weighted sum of its values with the output row kept in registers. A dot product
/// and a multiply-add call per position spend most of their instructions on call overhead and reductions at head
/// sizes of 64–128; these spend about 2·HeadDim/16 FMAs and three shuffles per position. Every attention path (decode,
/// prefill blocks, query by query) uses them, so all give the same bits. Each has a scalar reference the vector path
/// is tested against (the sums are in a different order, so they agree to float rounding).
/// </summary>
internal static unsafe class AttentionKernels
{
    /// <summary>Positions per tile (a KV page).</summary>
    public const int Tile = 32;

    /// <summary>Whether the vector path runs here: AVX-512 (512-bit vectors accelerated) and whole 16-float chunks of a head.</summary>
    public static bool VectorSupported(int headDim) => Vector512.IsHardwareAccelerated && Avx512F.IsSupported && headDim % 16 == 0;

    /// <summary>
    /// s[j] = scale · Σ_d q[d]·k[j·hd + d] for j in [0, rows) of a token-major key tile, rows a multiple of 16
    /// (the rows past a tile's last position are computed and ignored by the caller). Sixteen positions at a time:
    /// one FMA per position and 16 channels, then the sixteen partial vectors are summed across lanes in one
    /// fixed tree (the order is the same for every caller, so every path that uses this gets the same bits).
    /// </summary>
    public static void Scores(float* keys, int hd, int rows, float* q, float* s, float scale, bool vector)
    {
        if (!vector)
        {
            for (int j = 0; j < rows; j++)
            {
                float sum = 0;
                for (int d = 0; d < hd; d++) sum += q[d] * keys[j * hd + d];
                s[j] = sum * scale;
            }
            return;
        }
        var sc = Vector512.Create(scale);
        for (int j0 = 0; j0 < rows; j0 += 16)
        {
            float* k = keys + (long)j0 * hd;
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
            Vector512<float> a8 = default, a9 = default, a10 = default, a11 = default, a12 = default, a13 = default, a14 = default, a15 = default;
            for (int c = 0; c < hd; c += 16)
            {
                var qc = Vector512.Load(q + c);
                float* kc = k + c;
                a0 = Vector512.FusedMultiplyAdd(qc, Vector512.Load(kc), a0);
                a1 = Vector512.FusedMultiplyAdd(qc, Vector512.Load(kc + hd), a1);
                a2 = Vector512.FusedMultiplyAdd(qc, Vector512.Load(kc + 2 * hd), a2);
                a3 = Vector512.FusedMultiplyAdd(qc, Vector512.Load(kc + 3 * hd), a3);
                a4 = Vector512.FusedMultiplyAdd(qc, Vector512.Load(kc + 4 * hd), a4);
                a5 = Vector512.FusedMultiplyAdd(qc, Vector512.Load(kc + 5 * hd), a5);
                a6 = Vector512.FusedMultiplyAdd(qc, Vector512.Load(kc + 6 * hd), a6);
                a7 = Vector512.FusedMultiplyAdd(qc, Vector512.Load(kc + 7 * hd), a7);
                a8 = Vector512.FusedMultiplyAdd(qc, Vector512.Load(kc + 8 * hd), a8);
                a9 = Vector512.FusedMultiplyAdd(qc, Vector512.Load(kc + 9 * hd), a9);
                a10 = Vector512.FusedMultiplyAdd(qc, Vector512.Load(kc + 10 * hd), a10);
                a11 = Vector512.FusedMultiplyAdd(qc, Vector512.Load(kc + 11 * hd), a11);
                a12 = Vector512.FusedMultiplyAdd(qc, Vector512.Load(kc + 12 * hd), a12);
                a13 = Vector512.FusedMultiplyAdd(qc, Vector512.Load(kc + 13 * hd), a13);
                a14 = Vector512.FusedMultiplyAdd(qc, Vector512.Load(kc + 14 * hd), a14);
                a15 = Vector512.FusedMultiplyAdd(qc, Vector512.Load(kc + 15 * hd), a15);
            }
            // Lane sums of 16 vectors into one: pairs within 128-bit lanes (32-, then 64-bit interleaves), then
            // across the four 128-bit lanes.
            var r0 = Quad(Pair(a0, a1), Pair(a2, a3));
            var r1 = Quad(Pair(a4, a5), Pair(a6, a7));
            var r2 = Quad(Pair(a8, a9), Pair(a10, a11));
            var r3 = Quad(Pair(a12, a13), Pair(a14, a15));
            var m0 = Avx512F.Shuffle4x128(r0, r1, 0x88) + Avx512F.Shuffle4x128(r0, r1, 0xDD);
            var m1 = Avx512F.Shuffle4x128(r2, r3, 0x88) + Avx512F.Shuffle4x128(r2, r3, 0xDD);
            ((Avx512F.Shuffle4x128(m0, m1, 0x88) + Avx512F.Shuffle4x128(m0, m1, 0xDD)) * sc).Store(s + j0);
        }
    }

    /// <summary>Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Pair(Vector512<float> a, Vector512<float> b) => Avx512F.UnpackLow(a, b) + Avx512F.UnpackHigh(a, b);

    /// <summary>Per 128-bit lane: the lane's sums of the four vectors behind two <see cref="Pair"/>s, in their order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Quad(Vector512<float> p, Vector512<float> q) =>
        Avx512F.UnpackLow(p.AsDouble(), q.AsDouble()).AsSingle() + Avx512F.UnpackHigh(p.AsDouble(), q.AsDouble()).AsSingle();

    /// <summary>o[0, hd) += Σ_{j in [j0, j1)} w[j]·v[j·hd + ·] over positions of a token-major value tile.</summary>
    public static void AccumulateValues(float* v, int hd, float* w, int j0, int j1, float* o, bool vector)
    {
        if (!vector)
        {
            for (int j = j0; j < j1; j++)
            {
                float wj = w[j];
                float* vj = v + j * hd;
                for (int d = 0; d < hd; d++) o[d] += wj * vj[d];
            }
            return;
        }
        int c = 0;
        for (; c + 64 <= hd; c += 64) Accumulate4(v + c, hd, w, j0, j1, o + c);
        for (; c < hd; c += 16)
        {
            var acc = Vector512.Load(o + c);
            for (int j = j0; j < j1; j++) acc = Vector512.FusedMultiplyAdd(Vector512.Create(w[j]), Vector512.Load(v + j * hd + c), acc);
            acc.Store(o + c);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Accumulate4(float* v, int hd, float* w, int j0, int j1, float* o)
    {
        var a0 = Vector512.Load(o);
        var a1 = Vector512.Load(o + 16);
        var a2 = Vector512.Load(o + 32);
        var a3 = Vector512.Load(o + 48);
        for (int j = j0; j < j1; j++)
        {
            var wj = Vector512.Create(w[j]);
            float* vj = v + j * hd;
            a0 = Vector512.FusedMultiplyAdd(wj, Vector512.Load(vj), a0);
            a1 = Vector512.FusedMultiplyAdd(wj, Vector512.Load(vj + 16), a1);
            a2 = Vector512.FusedMultiplyAdd(wj, Vector512.Load(vj + 32), a2);
            a3 = Vector512.FusedMultiplyAdd(wj, Vector512.Load(vj + 48), a3);
        }
        a0.Store(o);
        a1.Store(o + 16);
        a2.Store(o + 32);
        a3.Store(o + 48);
    }
}
