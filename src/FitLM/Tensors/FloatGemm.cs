using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace FitLM.Tensors;

/// <summary>
/// Batched float products for F32/F16/BF16 weights with AVX-512: Y[t, r] = dot(W[r], X[t]) for a tile of weight
/// rows already converted to float and a batch of tokens. An outer-product kernel: tokens are packed 16 to a
/// register along k (X → [group][k][16]), each weight element is broadcast from its row, and a 6-row × 64-token
/// block keeps 24 zmm accumulators: per k, 4 activation loads and 6 broadcast loads feed 24 FMAs, so the FMA
/// units, not the loads, set the pace (a dot-product 4×4 tile needs 8 loads per 16 FMAs and sums horizontally).
/// k is blocked (<see cref="KC"/>) so that the 64 tokens' slice of X (32 KiB) and the rows' slice of W stay in L1
/// while every row group of the tile uses them. Tested against <see cref="Gemm.BlockScalar"/>.
/// </summary>
internal static unsafe class FloatGemm
{
    /// <summary>Rows per micro-tile.</summary>
    public const int R = 6;
    /// <summary>Tokens per register.</summary>
    public const int T = 16;
    /// <summary>Token registers per micro-tile (64 tokens).</summary>
    public const int TV = 4;
    /// <summary>k per pass: 4·16 tokens × 128 × 4 bytes = 32 KiB of X in L1 (64 and 256 measured slower).</summary>
    public const int KC = 128;

    public static bool IsSupported => Vector512.IsHardwareAccelerated && Avx512F.IsSupported;

    /// <summary>
    /// Floats between token groups of packed X: k·16 plus 4 cache lines, so that the 4 groups a micro-tile
    /// reads (and the weight rows) do not all map to the same L1 sets when k·64 bytes is a multiple of 4 KiB.
    /// </summary>
    public static long GroupStride(int k) => (long)(k + 4) * T;

    /// <summary>
    /// Row stride (floats) for a tile of weight rows of k elements: k plus one cache line, for the same reason
    /// (six rows 8 KiB apart would share L1 sets and evict each other).
    /// </summary>
    public static int RowStride(int k) => k + 16;

    /// <summary>Floats <see cref="PackX"/> writes for n tokens of k elements.</summary>
    public static long PackedLength(int n, int k) => (n + T - 1) / T * GroupStride(k);

    /// <summary>
    /// Tokens [g·16, g·16 + 16) of X [n × k] (row-major) → [k][16] at xp + g·GroupStride(k) (token 16g + i at lane i;
    /// padding tokens zero). 8×8 transposes: 8 tokens × 8 k at a time.
    /// </summary>
    public static void PackGroup(float* x, int n, int k, float* xp, int g)
    {
        float* dst = xp + g * GroupStride(k);
        var rows = stackalloc float*[8]; // once per call: a stackalloc inside the loop would grow the stack per pass
        for (int h = 0; h < 2; h++)
        {
            int t0 = g * T + 8 * h;
            int valid = Math.Clamp(n - t0, 0, 8);
            for (int i = 0; i < 8; i++) rows[i] = i < valid ? x + (long)(t0 + i) * k : null;
            int j = 0;
            if (Avx.IsSupported)
            {
                for (; j + 8 <= k; j += 8)
                {
                    var r0 = Row(rows[0], j); var r1 = Row(rows[1], j); var r2 = Row(rows[2], j); var r3 = Row(rows[3], j);
                    var r4 = Row(rows[4], j); var r5 = Row(rows[5], j); var r6 = Row(rows[6], j); var r7 = Row(rows[7], j);
                    var a0 = Avx.UnpackLow(r0, r1); var a1 = Avx.UnpackHigh(r0, r1);
                    var a2 = Avx.UnpackLow(r2, r3); var a3 = Avx.UnpackHigh(r2, r3);
                    var a4 = Avx.UnpackLow(r4, r5); var a5 = Avx.UnpackHigh(r4, r5);
                    var a6 = Avx.UnpackLow(r6, r7); var a7 = Avx.UnpackHigh(r6, r7);
                    var b0 = Avx.Shuffle(a0, a2, 0x44); var b1 = Avx.Shuffle(a0, a2, 0xEE);
                    var b2 = Avx.Shuffle(a1, a3, 0x44); var b3 = Avx.Shuffle(a1, a3, 0xEE);
                    var b4 = Avx.Shuffle(a4, a6, 0x44); var b5 = Avx.Shuffle(a4, a6, 0xEE);
                    var b6 = Avx.Shuffle(a5, a7, 0x44); var b7 = Avx.Shuffle(a5, a7, 0xEE);
                    float* d = dst + (long)j * T + 8 * h;
                    Avx.Permute2x128(b0, b4, 0x20).Store(d);
                    Avx.Permute2x128(b1, b5, 0x20).Store(d + T);
                    Avx.Permute2x128(b2, b6, 0x20).Store(d + 2 * T);
                    Avx.Permute2x128(b3, b7, 0x20).Store(d + 3 * T);
                    Avx.Permute2x128(b0, b4, 0x31).Store(d + 4 * T);
                    Avx.Permute2x128(b1, b5, 0x31).Store(d + 5 * T);
                    Avx.Permute2x128(b2, b6, 0x31).Store(d + 6 * T);
                    Avx.Permute2x128(b3, b7, 0x31).Store(d + 7 * T);
                }
            }
            for (; j < k; j++)
                for (int i = 0; i < 8; i++) dst[(long)j * T + 8 * h + i] = rows[i] != null ? rows[i][j] : 0;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Row(float* row, int j) => row != null ? Vector256.Load(row + j) : Vector256<float>.Zero;

    /// <summary>All groups of <see cref="PackGroup"/> (tests; MatMul packs groups in parallel).</summary>
    public static void PackX(float* x, int n, int k, float* xp)
    {
        for (int g = 0; g < (n + T - 1) / T; g++) PackGroup(x, n, k, xp, g);
    }

    /// <summary>
    /// Y[t·yStride + r] = dot(w row r, X[t]) for r &lt; rows, t &lt; n: w holds <paramref name="rowsPadded"/> (a multiple
    /// of <see cref="R"/>, rows past <paramref name="rows"/> zero) rows of k floats, <see cref="RowStride"/>(k) apart;
    /// xp is <see cref="PackX"/>'s output. <paramref name="acc"/> is scratch of rowsPadded × (groups·16) floats.
    /// </summary>
    public static void Tile(float* w, int rows, int rowsPadded, float* xp, int n, int k, float* y, long yStride, float* acc)
    {
        long ws = RowStride(k), xs = GroupStride(k);
        int groups = (n + T - 1) / T;
        int rgs = rowsPadded / R;
        long accPerRg = (long)groups * T * R; // acc layout: [rg][group][r][16]
        new Span<float>(acc, (int)(rgs * accPerRg)).Clear();
        for (int k0 = 0; k0 < k; k0 += KC)
        {
            int kc = Math.Min(KC, k - k0);
            int g = 0;
            for (; g + TV <= groups; g += TV)
                for (int rg = 0; rg < rgs; rg++)
                    Micro6x64(w + rg * R * ws + k0, ws, xp + g * xs + (long)k0 * T, xs, kc, acc + rg * accPerRg + (long)g * T * R);
            for (; g < groups; g++)
                for (int rg = 0; rg < rgs; rg++)
                    Micro6x16(w + rg * R * ws + k0, ws, xp + g * xs + (long)k0 * T, kc, acc + rg * accPerRg + (long)g * T * R);
        }
        for (int rg = 0; rg < rgs; rg++)
            for (int gi = 0; gi < groups; gi++)
            {
                float* a = acc + rg * accPerRg + (long)gi * T * R;
                int tn = Math.Min(T, n - gi * T), rn = Math.Min(R, rows - rg * R);
                for (int r = 0; r < rn; r++)
                    for (int i = 0; i < tn; i++)
                        y[(long)(gi * T + i) * yStride + rg * R + r] = a[r * T + i];
            }
    }

    /// <summary>acc[r][v·16 + i] += Σ_k w[r·ws + k]·x[v·xs + k·16 + i] for 6 rows, 4 token registers.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Micro6x64(float* w, long ws, float* x, long xs, int kc, float* acc)
    {
        // acc is [group][r][16] with groups consecutive: token register v of row r at acc + v·96 + r·16.
        const int GS = T * R;
        var c00 = Vector512.Load(acc); var c01 = Vector512.Load(acc + GS); var c02 = Vector512.Load(acc + 2 * GS); var c03 = Vector512.Load(acc + 3 * GS);
        var c10 = Vector512.Load(acc + 16); var c11 = Vector512.Load(acc + GS + 16); var c12 = Vector512.Load(acc + 2 * GS + 16); var c13 = Vector512.Load(acc + 3 * GS + 16);
        var c20 = Vector512.Load(acc + 32); var c21 = Vector512.Load(acc + GS + 32); var c22 = Vector512.Load(acc + 2 * GS + 32); var c23 = Vector512.Load(acc + 3 * GS + 32);
        var c30 = Vector512.Load(acc + 48); var c31 = Vector512.Load(acc + GS + 48); var c32 = Vector512.Load(acc + 2 * GS + 48); var c33 = Vector512.Load(acc + 3 * GS + 48);
        var c40 = Vector512.Load(acc + 64); var c41 = Vector512.Load(acc + GS + 64); var c42 = Vector512.Load(acc + 2 * GS + 64); var c43 = Vector512.Load(acc + 3 * GS + 64);
        var c50 = Vector512.Load(acc + 80); var c51 = Vector512.Load(acc + GS + 80); var c52 = Vector512.Load(acc + 2 * GS + 80); var c53 = Vector512.Load(acc + 3 * GS + 80);
        float* w0 = w, w1 = w + ws, w2 = w + 2 * ws, w3 = w + 3 * ws, w4 = w + 4 * ws, w5 = w + 5 * ws;
        float* x0 = x, x1 = x + xs, x2 = x + 2 * xs, x3 = x + 3 * xs;
        for (int j = 0; j < kc; j++)
        {
            var a0 = Vector512.Load(x0 + j * T);
            var a1 = Vector512.Load(x1 + j * T);
            var a2 = Vector512.Load(x2 + j * T);
            var a3 = Vector512.Load(x3 + j * T);
            var b = Vector512.Create(w0[j]);
            c00 = Avx512F.FusedMultiplyAdd(b, a0, c00); c01 = Avx512F.FusedMultiplyAdd(b, a1, c01);
            c02 = Avx512F.FusedMultiplyAdd(b, a2, c02); c03 = Avx512F.FusedMultiplyAdd(b, a3, c03);
            b = Vector512.Create(w1[j]);
            c10 = Avx512F.FusedMultiplyAdd(b, a0, c10); c11 = Avx512F.FusedMultiplyAdd(b, a1, c11);
            c12 = Avx512F.FusedMultiplyAdd(b, a2, c12); c13 = Avx512F.FusedMultiplyAdd(b, a3, c13);
            b = Vector512.Create(w2[j]);
            c20 = Avx512F.FusedMultiplyAdd(b, a0, c20); c21 = Avx512F.FusedMultiplyAdd(b, a1, c21);
            c22 = Avx512F.FusedMultiplyAdd(b, a2, c22); c23 = Avx512F.FusedMultiplyAdd(b, a3, c23);
            b = Vector512.Create(w3[j]);
            c30 = Avx512F.FusedMultiplyAdd(b, a0, c30); c31 = Avx512F.FusedMultiplyAdd(b, a1, c31);
            c32 = Avx512F.FusedMultiplyAdd(b, a2, c32); c33 = Avx512F.FusedMultiplyAdd(b, a3, c33);
            b = Vector512.Create(w4[j]);
            c40 = Avx512F.FusedMultiplyAdd(b, a0, c40); c41 = Avx512F.FusedMultiplyAdd(b, a1, c41);
            c42 = Avx512F.FusedMultiplyAdd(b, a2, c42); c43 = Avx512F.FusedMultiplyAdd(b, a3, c43);
            b = Vector512.Create(w5[j]);
            c50 = Avx512F.FusedMultiplyAdd(b, a0, c50); c51 = Avx512F.FusedMultiplyAdd(b, a1, c51);
            c52 = Avx512F.FusedMultiplyAdd(b, a2, c52); c53 = Avx512F.FusedMultiplyAdd(b, a3, c53);
        }
        c00.Store(acc); c01.Store(acc + GS); c02.Store(acc + 2 * GS); c03.Store(acc + 3 * GS);
        c10.Store(acc + 16); c11.Store(acc + GS + 16); c12.Store(acc + 2 * GS + 16); c13.Store(acc + 3 * GS + 16);
        c20.Store(acc + 32); c21.Store(acc + GS + 32); c22.Store(acc + 2 * GS + 32); c23.Store(acc + 3 * GS + 32);
        c30.Store(acc + 48); c31.Store(acc + GS + 48); c32.Store(acc + 2 * GS + 48); c33.Store(acc + 3 * GS + 48);
        c40.Store(acc + 64); c41.Store(acc + GS + 64); c42.Store(acc + 2 * GS + 64); c43.Store(acc + 3 * GS + 64);
        c50.Store(acc + 80); c51.Store(acc + GS + 80); c52.Store(acc + 2 * GS + 80); c53.Store(acc + 3 * GS + 80);
    }

    /// <summary>The tail: 6 rows × one register of 16 tokens.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Micro6x16(float* w, long ws, float* x, int kc, float* acc)
    {
        var c0 = Vector512.Load(acc); var c1 = Vector512.Load(acc + 16); var c2 = Vector512.Load(acc + 32);
        var c3 = Vector512.Load(acc + 48); var c4 = Vector512.Load(acc + 64); var c5 = Vector512.Load(acc + 80);
        float* w0 = w, w1 = w + ws, w2 = w + 2 * ws, w3 = w + 3 * ws, w4 = w + 4 * ws, w5 = w + 5 * ws;
        for (int j = 0; j < kc; j++)
        {
            var a = Vector512.Load(x + j * T);
            c0 = Avx512F.FusedMultiplyAdd(Vector512.Create(w0[j]), a, c0);
            c1 = Avx512F.FusedMultiplyAdd(Vector512.Create(w1[j]), a, c1);
            c2 = Avx512F.FusedMultiplyAdd(Vector512.Create(w2[j]), a, c2);
            c3 = Avx512F.FusedMultiplyAdd(Vector512.Create(w3[j]), a, c3);
            c4 = Avx512F.FusedMultiplyAdd(Vector512.Create(w4[j]), a, c4);
            c5 = Avx512F.FusedMultiplyAdd(Vector512.Create(w5[j]), a, c5);
        }
        c0.Store(acc); c1.Store(acc + 16); c2.Store(acc + 32); c3.Store(acc + 48); c4.Store(acc + 64); c5.Store(acc + 80);
    }
}
