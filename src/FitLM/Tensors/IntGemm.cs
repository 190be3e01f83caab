using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace FitLM.Tensors;

/// <summary>
/// Batched integer products Y[t, r] = dot(W[r], X[t]) for quantized weights and a batch of quantized tokens
/// (prefill). A dot-product-per-(row, token) kernel spends most of its instructions unpacking weights and
/// applying per-block scales, so here both sides are repacked once per call into one layout shared by every
/// weight type, and a register-blocked outer-product kernel does the work:
/// <list type="bullet">
/// <item>Every weight row is decoded to bytes u = q + 128 (q the signed integer weight of its sub-block, so
/// w = ws·q + wm with a float scale ws and offset wm per sub-block of 16 or 32 elements), and 4 rows are
/// interleaved in 4-byte groups: one broadcast dword gives a row's next 4 weights.</item>
/// <item>Tokens are grouped by 8 and interleaved the same way: one 32-byte load gives 4 quants of 8 tokens,
/// so one vpdpbusd (u8 weights × s8 activations) does 4 multiply-adds for 8 tokens of one row.</item>
/// <item>A 4-row × 16-token tile keeps 8 int32 and 8 float accumulators in registers (.NET uses the 32 EVEX
/// registers). Per sub-block the int32 sums start at -128·Σa (the +128 of u), and are then scaled into the
/// floats: F += float(I)·(ws·da) [+ wm·(da·Σa) for types with mins].</item>
/// </list>
/// The weight decoding into bytes has a scalar reference and vectorized forms that must agree byte for byte;
/// the results are checked against <see cref="IntDot"/>'s scalar reference.
/// </summary>
internal static unsafe class IntGemm
{
    /// <summary>Rows per micro-tile (interleaved together).</summary>
    public const int R = 4;
    /// <summary>Tokens per group (one int32 lane each).</summary>
    public const int G = 8;

    /// <summary>Elements per sub-block (one float scale): 16 for q2_K, q3_K, q6_K; 32 otherwise.</summary>
    public static int SubBlock(GgmlType t) => t switch
    {
        GgmlType.Q2_K => BlockLayout.Q2_K.SubBlock,
        GgmlType.Q3_K => BlockLayout.Q3_K.SubBlock,
        GgmlType.Q6_K => BlockLayout.Q6_K.SubBlock,
        GgmlType.Q4_K => BlockLayout.Q4_K.SubBlock,
        GgmlType.Q5_K => BlockLayout.Q5_K.SubBlock,
        _ => BlockLayout.QK,
    };

    /// <summary>Whether the weights have per-sub-block offsets (mins) to add, w = ws·q + wm.</summary>
    public static bool HasMins(GgmlType t) => t is GgmlType.Q4_1 or GgmlType.Q5_1 or GgmlType.Q2_K or GgmlType.Q4_K or GgmlType.Q5_K;

    // ---------------------------------------------------------------- packed activations

    /// <summary>
    /// Quantized tokens in the kernel's layout, per group g of 8 tokens and sub-block s:
    /// Q[g][s][k][8][4] (4 quants of each token for k in 0..SB/4), C[g][s][8] = -128·Σa, D[g][s][8] = the
    /// activation scale, M[g][s][8] = d·Σa (q8_K) or q8_1's s. Padding tokens are zero.
    /// </summary>
    public sealed class PackedActivations : IDisposable
    {
        private byte* _mem;
        private long _capacity;
        internal sbyte* Q;
        internal int* C;
        internal float* D;
        internal float* M;
        public int Groups { get; private set; }
        public int Cols { get; private set; }
        public int SubBlockSize { get; private set; }
        public int SubBlocks => Cols / SubBlockSize;
        /// <summary>Bytes of Q per group.</summary>
        internal long GroupStride => (long)Cols * G;

        internal void Reshape(int groups, int cols, int sb)
        {
            long q = Align((long)groups * cols * G);
            long v = Align((long)groups * (cols / sb) * G * 4);
            long need = q + 3 * v;
            if (need > _capacity)
            {
                Free();
                _mem = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(need, 64), 64);
                _capacity = need;
            }
            Groups = groups; Cols = cols; SubBlockSize = sb;
            Q = (sbyte*)_mem;
            C = (int*)(_mem + q);
            D = (float*)(_mem + q + v);
            M = (float*)(_mem + q + 2 * v);
        }

        private void Free()
        {
            if (_mem != null) NativeMemory.AlignedFree(_mem);
            _mem = null;
            _capacity = 0;
        }

        public void Dispose() { Free(); GC.SuppressFinalize(this); }
        ~PackedActivations() => Free();
    }

    private static long Align(long n) => (n + 63) & ~63L;

    /// <summary>Repacks <paramref name="a"/> (quantized for <paramref name="type"/>) into the kernel layout.</summary>
    public static void PackActivations(GgmlType type, QuantizedActivations a, PackedActivations p)
    {
        ShapeActivations(type, a, p);
        for (int g = 0; g < p.Groups; g++) PackGroup(a, p, g);
    }

    /// <summary>Sizes <paramref name="p"/> for <paramref name="a"/>'s tokens; then <see cref="PackGroup"/> fills each group (in any order, on any thread).</summary>
    internal static void ShapeActivations(GgmlType type, QuantizedActivations a, PackedActivations p) =>
        p.Reshape((a.Count + G - 1) / G, a.Cols, SubBlock(type));

    /// <summary>Packs token group <paramref name="g"/> (tokens 8g to 8g+7) of <paramref name="a"/>; padding tokens are zero.</summary>
    internal static void PackGroup(QuantizedActivations a, PackedActivations p, int g)
    {
        int sb = p.SubBlockSize, cols = p.Cols, n = a.Count, nsb = cols / sb;
        bool k = a.Format == ActFormat.Q8_K;
        int* qd = (int*)(p.Q + g * p.GroupStride);
        int* c = p.C + (long)g * nsb * G;
        float* d = p.D + (long)g * nsb * G;
        float* m = p.M + (long)g * nsb * G;
        for (int i = 0; i < G; i++)
        {
            int t = g * G + i;
            if (t >= n)
            {
                for (int q = 0; q < cols / 4; q++) qd[q * G + i] = 0;
                for (int s = 0; s < nsb; s++) { c[s * G + i] = 0; d[s * G + i] = 0; m[s * G + i] = 0; }
                continue;
            }
            var r = a.Row(t);
            int* src = (int*)r.Q;
            // Dword q of the token goes to [q][i]: sub-block s, quad k is q = s·SB/4 + k.
            for (int q = 0; q < cols / 4; q++) qd[q * G + i] = src[q];
            for (int s = 0; s < nsb; s++)
            {
                int sum;
                float da, ms;
                if (k)
                {
                    sum = sb == 16 ? r.BSums[s] : r.BSums[2 * s] + r.BSums[2 * s + 1];
                    da = r.D[s * sb / 256];
                    ms = da * sum;
                }
                else
                {
                    sum = r.Sum[s];
                    da = r.D[s];
                    ms = r.S[s];
                }
                c[s * G + i] = -128 * sum;
                d[s * G + i] = da;
                m[s * G + i] = ms;
            }
        }
    }

    // ---------------------------------------------------------------- packed weights

    /// <summary>
    /// Up to <see cref="MaxRows"/> weight rows in the kernel layout, per group of 4 rows and sub-block s:
    /// Q[rg][s][k][4][4] bytes (u = q + 128), S[rg][s][4] scales, M[rg][s][4] offsets. Padding rows are u = 128
    /// with zero scale.
    /// </summary>
    public sealed class PackedWeights : IDisposable
    {
        private byte* _mem;
        private long _capacity;
        internal byte* Q;
        internal float* S;
        internal float* M;
        internal byte* Scratch; // R decoded rows, one after another
        public int Rows { get; private set; }
        public int Cols { get; private set; }
        public int SubBlockSize { get; private set; }
        public int RowGroups => (Rows + R - 1) / R;
        internal long GroupStride => (long)Cols * R;

        internal void Reshape(int rows, int cols, int sb)
        {
            int groups = (rows + R - 1) / R;
            long q = Align((long)groups * cols * R);
            long v = Align((long)groups * (cols / sb) * R * 4);
            long scratch = R * Align(cols) + 2 * Align((long)R * (cols / 16) * 4);
            long need = q + 2 * v + scratch;
            if (need > _capacity)
            {
                Free();
                _mem = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(need, 64), 64);
                _capacity = need;
            }
            Rows = rows; Cols = cols; SubBlockSize = sb;
            Q = _mem;
            S = (float*)(_mem + q);
            M = (float*)(_mem + q + v);
            Scratch = _mem + q + 2 * v;
        }

        private void Free()
        {
            if (_mem != null) NativeMemory.AlignedFree(_mem);
            _mem = null;
            _capacity = 0;
        }

        public void Dispose() { Free(); GC.SuppressFinalize(this); }
        ~PackedWeights() => Free();
    }

    /// <summary>
    /// Decodes rows [0, rows) of W (row r at w + r·rowBytes) into <paramref name="pw"/>. <paramref name="vector"/>
    /// selects the AVX2 decoders (else the scalar reference); both give identical bytes and scales.
    /// </summary>
    public static void PackWeights(GgmlType type, byte* w, long rowBytes, int rows, int cols, PackedWeights pw, bool vector)
    {
        int sb = SubBlock(type), nsb = cols / sb;
        pw.Reshape(rows, cols, sb);
        vector &= Avx2.IsSupported;
        byte* u = pw.Scratch;
        long uStride = Align(cols);
        float* ws = (float*)(pw.Scratch + R * uStride);
        float* wm = ws + Align((long)R * (cols / 16) * 4) / 4;
        for (int rg = 0; rg < pw.RowGroups; rg++)
        {
            for (int i = 0; i < R; i++)
            {
                int r = rg * R + i;
                byte* ur = u + i * uStride;
                float* sr = ws + i * nsb, mr = wm + i * nsb;
                if (r < rows) DecodeRow(type, w + r * rowBytes, cols, ur, sr, mr, vector);
                else
                {
                    new Span<byte>(ur, cols).Fill(128);
                    new Span<float>(sr, nsb).Clear();
                    new Span<float>(mr, nsb).Clear();
                }
            }
            // Interleave the 4 rows by dwords: [quad q][row i] = dword q of row i.
            byte* dst = pw.Q + rg * pw.GroupStride;
            int q = 0;
            if (vector)
            {
                for (; q + 8 <= cols / 4; q += 8)
                    Interleave4x8(u + 4 * q, uStride, dst + 16 * q);
            }
            for (; q < cols / 4; q++)
                for (int i = 0; i < R; i++)
                    ((int*)dst)[q * R + i] = ((int*)(u + i * uStride))[q];
            float* s = pw.S + (long)rg * nsb * R, m = pw.M + (long)rg * nsb * R;
            for (int j = 0; j < nsb; j++)
                for (int i = 0; i < R; i++)
                {
                    s[j * R + i] = ws[i * nsb + j];
                    m[j * R + i] = wm[i * nsb + j];
                }
        }
    }

    /// <summary>4 rows × 8 dwords → 8 × (4 rows' dword): a 4×8 transpose in 12 shuffles.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Interleave4x8(byte* src, long stride, byte* dst)
    {
        var r0 = Vector256.Load((int*)src);
        var r1 = Vector256.Load((int*)(src + stride));
        var r2 = Vector256.Load((int*)(src + 2 * stride));
        var r3 = Vector256.Load((int*)(src + 3 * stride));
        var t0 = Avx2.UnpackLow(r0, r1);   // r0d0 r1d0 r0d1 r1d1 | d4 d5
        var t1 = Avx2.UnpackHigh(r0, r1);  // r0d2 r1d2 r0d3 r1d3 | d6 d7
        var t2 = Avx2.UnpackLow(r2, r3);
        var t3 = Avx2.UnpackHigh(r2, r3);
        var u0 = Avx2.UnpackLow(t0.AsInt64(), t2.AsInt64()).AsInt32();  // d0 | d4
        var u1 = Avx2.UnpackHigh(t0.AsInt64(), t2.AsInt64()).AsInt32(); // d1 | d5
        var u2 = Avx2.UnpackLow(t1.AsInt64(), t3.AsInt64()).AsInt32();  // d2 | d6
        var u3 = Avx2.UnpackHigh(t1.AsInt64(), t3.AsInt64()).AsInt32(); // d3 | d7
        Avx2.Permute2x128(u0, u1, 0x20).Store((int*)dst);
        Avx2.Permute2x128(u2, u3, 0x20).Store((int*)(dst + 32));
        Avx2.Permute2x128(u0, u1, 0x31).Store((int*)(dst + 64));
        Avx2.Permute2x128(u2, u3, 0x31).Store((int*)(dst + 96));
    }

    // ---------------------------------------------------------------- weight decoding (u = q + 128, ws, wm)

    /// <summary>
    /// One row to bytes u = q + 128 in element order, with per-sub-block scale ws and offset wm such that the
    /// weight is ws·(u - 128) + wm.
    /// </summary>
    internal static void DecodeRow(GgmlType type, byte* row, int cols, byte* u, float* ws, float* wm, bool vector)
    {
        switch (type)
        {
            case GgmlType.Q8_0: DecodeQ8_0(row, cols, u, ws, wm, vector); break;
            case GgmlType.Q4_0: DecodeQ4_0(row, cols, u, ws, wm, vector); break;
            case GgmlType.Q5_0: DecodeQ5_0(row, cols, u, ws, wm, vector); break;
            case GgmlType.Q4_1: DecodeQ4_1(row, cols, u, ws, wm, vector); break;
            case GgmlType.Q5_1: DecodeQ5_1(row, cols, u, ws, wm, vector); break;
            case GgmlType.Q2_K: DecodeQ2_K(row, cols, u, ws, wm, vector); break;
            case GgmlType.Q3_K: DecodeQ3_K(row, cols, u, ws, wm, vector); break;
            case GgmlType.Q4_K: DecodeQ4_K(row, cols, u, ws, wm, vector); break;
            case GgmlType.Q5_K: DecodeQ5_K(row, cols, u, ws, wm, vector); break;
            case GgmlType.Q6_K: DecodeQ6_K(row, cols, u, ws, wm, vector); break;
            default: throw new FitLMException($"no integer GEMM for {type}");
        }
    }

    private static float H(byte* p) => IntDot.H(p);

    private static void DecodeQ8_0(byte* row, int cols, byte* u, float* ws, float* wm, bool vector)
    {
        for (int b = 0; b < cols / BlockLayout.QK; b++)
        {
            byte* blk = row + BlockLayout.Q8_0.Bytes * b;
            ws[b] = H(blk + BlockLayout.Q8_0.D);
            wm[b] = 0;
            if (vector) (Vector256.Load(blk + BlockLayout.Q8_0.Qs) ^ Vector256.Create((byte)0x80)).Store(u + 32 * b);
            else for (int j = 0; j < BlockLayout.QK; j++) u[32 * b + j] = (byte)(((sbyte*)blk)[BlockLayout.Q8_0.Qs + j] + 128);
        }
    }

    private static void DecodeQ4_0(byte* row, int cols, byte* u, float* ws, float* wm, bool vector)
    {
        for (int b = 0; b < cols / BlockLayout.QK; b++)
        {
            byte* blk = row + BlockLayout.Q4_0.Bytes * b;
            byte* qs = blk + BlockLayout.Q4_0.Qs;
            ws[b] = H(blk + BlockLayout.Q4_0.D);
            wm[b] = 0;
            if (vector) (BlockDecode.Nibbles(qs) + Vector256.Create((byte)120)).Store(u + 32 * b);
            else
                for (int j = 0; j < 16; j++)
                {
                    u[32 * b + j] = (byte)((qs[j] & 0xF) - 8 + 128);
                    u[32 * b + j + 16] = (byte)((qs[j] >> 4) - 8 + 128);
                }
        }
    }

    private static void DecodeQ5_0(byte* row, int cols, byte* u, float* ws, float* wm, bool vector)
    {
        for (int b = 0; b < cols / BlockLayout.QK; b++)
        {
            byte* blk = row + BlockLayout.Q5_0.Bytes * b;
            ws[b] = H(blk + BlockLayout.Q5_0.D);
            wm[b] = 0;
            uint qh = *(uint*)(blk + BlockLayout.Q5_0.Qh);
            if (vector) (BlockDecode.Q5Quants(blk + BlockLayout.Q5_0.Qs, qh) + Vector256.Create((byte)112)).Store(u + 32 * b);
            else
            {
                var qs = new ReadOnlySpan<byte>(blk + BlockLayout.Q5_0.Qs, BlockLayout.QK / 2);
                for (int j = 0; j < BlockLayout.QK; j++) u[32 * b + j] = (byte)(BlockDecode.Q5Quant(qs, qh, j) - 16 + 128);
            }
        }
    }

    private static void DecodeQ4_1(byte* row, int cols, byte* u, float* ws, float* wm, bool vector)
    {
        for (int b = 0; b < cols / BlockLayout.QK; b++)
        {
            byte* blk = row + BlockLayout.Q4_1.Bytes * b;
            byte* qs = blk + BlockLayout.Q4_1.Qs;
            ws[b] = H(blk + BlockLayout.Q4_1.D);
            wm[b] = H(blk + BlockLayout.Q4_1.M);
            if (vector) (BlockDecode.Nibbles(qs) + Vector256.Create((byte)128)).Store(u + 32 * b);
            else
                for (int j = 0; j < 16; j++)
                {
                    u[32 * b + j] = (byte)((qs[j] & 0xF) + 128);
                    u[32 * b + j + 16] = (byte)((qs[j] >> 4) + 128);
                }
        }
    }

    private static void DecodeQ5_1(byte* row, int cols, byte* u, float* ws, float* wm, bool vector)
    {
        for (int b = 0; b < cols / BlockLayout.QK; b++)
        {
            byte* blk = row + BlockLayout.Q5_1.Bytes * b;
            ws[b] = H(blk + BlockLayout.Q5_1.D);
            wm[b] = H(blk + BlockLayout.Q5_1.M);
            uint qh = *(uint*)(blk + BlockLayout.Q5_1.Qh);
            if (vector) (BlockDecode.Q5Quants(blk + BlockLayout.Q5_1.Qs, qh) + Vector256.Create((byte)128)).Store(u + 32 * b);
            else
            {
                var qs = new ReadOnlySpan<byte>(blk + BlockLayout.Q5_1.Qs, BlockLayout.QK / 2);
                for (int j = 0; j < BlockLayout.QK; j++) u[32 * b + j] = (byte)(BlockDecode.Q5Quant(qs, qh, j) + 128);
            }
        }
    }

    private static void DecodeQ2_K(byte* row, int cols, byte* u, float* ws, float* wm, bool vector)
    {
        const int subBlocks = BlockLayout.QK_K / BlockLayout.Q2_K.SubBlock;
        for (int i = 0; i < cols / BlockLayout.QK_K; i++)
        {
            byte* blk = row + BlockLayout.Q2_K.Bytes * i;
            float d = H(blk + BlockLayout.Q2_K.D), dmin = H(blk + BlockLayout.Q2_K.DMin);
            for (int s = 0; s < subBlocks; s++)
            {
                byte packed = blk[BlockLayout.Q2_K.Scales + s];
                ws[subBlocks * i + s] = d * BlockDecode.Q2_KScale(packed);
                wm[subBlocks * i + s] = -dmin * BlockDecode.Q2_KMin(packed);
            }
            byte* ui = u + BlockLayout.QK_K * i;
            if (vector)
                for (int h = 0; h < 2; h++)
                {
                    var q2 = Vector256.Load(blk + BlockLayout.Q2_K.Qs + 32 * h);
                    for (int k = 0; k < 4; k++)
                        (BlockDecode.Q2Plane(q2, k) + Vector256.Create((byte)128)).Store(ui + 128 * h + 32 * k);
                }
            else
            {
                var qs = new ReadOnlySpan<byte>(blk + BlockLayout.Q2_K.Qs, BlockLayout.QK_K / 4);
                for (int e = 0; e < BlockLayout.QK_K; e++) ui[e] = (byte)(BlockDecode.Q2Bits(qs, e) + 128);
            }
        }
    }

    private static void DecodeQ3_K(byte* row, int cols, byte* u, float* ws, float* wm, bool vector)
    {
        const int subBlocks = BlockLayout.QK_K / BlockLayout.Q3_K.SubBlock;
        for (int i = 0; i < cols / BlockLayout.QK_K; i++)
        {
            byte* blk = row + BlockLayout.Q3_K.Bytes * i;
            float d = H(blk + BlockLayout.Q3_K.D);
            var scales = BlockDecode.ScalesQ3_K(blk + BlockLayout.Q3_K.Scales);
            for (int s = 0; s < subBlocks; s++)
            {
                ws[subBlocks * i + s] = d * scales.GetElement(s);
                wm[subBlocks * i + s] = 0;
            }
            byte* ui = u + BlockLayout.QK_K * i;
            if (vector)
            {
                var hm = Vector256.Load(blk + BlockLayout.Q3_K.HMask);
                for (int h = 0; h < 2; h++)
                {
                    var q3 = Vector256.Load(blk + BlockLayout.Q3_K.Qs + 32 * h);
                    for (int k = 0; k < 4; k++)
                        (BlockDecode.Q3_KPlane(q3, hm, h, k) + Vector256.Create((byte)124)).Store(ui + 128 * h + 32 * k);
                }
            }
            else
            {
                var block = new ReadOnlySpan<byte>(blk, BlockLayout.Q3_K.Bytes);
                for (int e = 0; e < BlockLayout.QK_K; e++) ui[e] = (byte)(BlockDecode.Q3_KQuant(block, e) - 4 + 128);
            }
        }
    }

    private static void DecodeQ4_K(byte* row, int cols, byte* u, float* ws, float* wm, bool vector)
    {
        for (int i = 0; i < cols / BlockLayout.QK_K; i++)
        {
            byte* blk = row + BlockLayout.Q4_K.Bytes * i;
            float d = H(blk + BlockLayout.Q4_K.D), dmin = H(blk + BlockLayout.Q4_K.DMin);
            BlockDecode.ScalesMinsK4(blk + BlockLayout.Q4_K.Scales, out ulong scales, out ulong mins);
            for (int j = 0; j < 8; j++)
            {
                ws[8 * i + j] = d * BlockDecode.ByteAt(scales, j);
                wm[8 * i + j] = -dmin * BlockDecode.ByteAt(mins, j);
            }
            byte* ui = u + BlockLayout.QK_K * i;
            for (int c = 0; c < 4; c++)
            {
                byte* qs = blk + BlockLayout.Q4_K.Qs + 32 * c;
                if (vector)
                {
                    BlockDecode.SplitNibbles(Vector256.Load(qs), out var lo, out var hi);
                    (lo + Vector256.Create((byte)128)).Store(ui + 64 * c);
                    (hi + Vector256.Create((byte)128)).Store(ui + 64 * c + 32);
                }
                else
                    for (int l = 0; l < 32; l++)
                    {
                        ui[64 * c + l] = (byte)((qs[l] & 0xF) + 128);
                        ui[64 * c + 32 + l] = (byte)((qs[l] >> 4) + 128);
                    }
            }
        }
    }

    private static void DecodeQ5_K(byte* row, int cols, byte* u, float* ws, float* wm, bool vector)
    {
        for (int i = 0; i < cols / BlockLayout.QK_K; i++)
        {
            byte* blk = row + BlockLayout.Q5_K.Bytes * i;
            float d = H(blk + BlockLayout.Q5_K.D), dmin = H(blk + BlockLayout.Q5_K.DMin);
            BlockDecode.ScalesMinsK4(blk + BlockLayout.Q5_K.Scales, out ulong scales, out ulong mins);
            for (int j = 0; j < 8; j++)
            {
                ws[8 * i + j] = d * BlockDecode.ByteAt(scales, j);
                wm[8 * i + j] = -dmin * BlockDecode.ByteAt(mins, j);
            }
            byte* qh = blk + BlockLayout.Q5_K.Qh;
            byte* ui = u + BlockLayout.QK_K * i;
            var qhv = vector ? Vector256.Load(qh) : default;
            for (int c = 0; c < 4; c++)
            {
                byte* qs = blk + BlockLayout.Q5_K.Qs + 32 * c;
                if (vector)
                {
                    BlockDecode.SplitNibbles(Vector256.Load(qs), out var lo, out var hi);
                    (lo + BlockDecode.BitTo4(qhv, 2 * c) + Vector256.Create((byte)128)).Store(ui + 64 * c);
                    (hi + BlockDecode.BitTo4(qhv, 2 * c + 1) + Vector256.Create((byte)128)).Store(ui + 64 * c + 32);
                }
                else
                    for (int l = 0; l < 32; l++)
                    {
                        ui[64 * c + l] = (byte)(((qs[l] & 0xF) | BlockDecode.Q5_KHighBit(qh[l], 2 * c)) + 128);
                        ui[64 * c + 32 + l] = (byte)(((qs[l] >> 4) | BlockDecode.Q5_KHighBit(qh[l], 2 * c + 1)) + 128);
                    }
            }
        }
    }

    private static void DecodeQ6_K(byte* row, int cols, byte* u, float* ws, float* wm, bool vector)
    {
        const int subBlocks = BlockLayout.QK_K / BlockLayout.Q6_K.SubBlock;
        for (int i = 0; i < cols / BlockLayout.QK_K; i++)
        {
            byte* blk = row + BlockLayout.Q6_K.Bytes * i;
            float d = H(blk + BlockLayout.Q6_K.D);
            sbyte* sc = (sbyte*)(blk + BlockLayout.Q6_K.Scales);
            for (int s = 0; s < subBlocks; s++)
            {
                ws[subBlocks * i + s] = d * sc[s];
                wm[subBlocks * i + s] = 0;
            }
            byte* ui = u + BlockLayout.QK_K * i;
            if (vector)
            {
                var off = Vector256.Create((byte)96); // q - 32 + 128
                for (int h = 0; h < 2; h++)
                {
                    BlockDecode.Q6_KQuants(blk, h, out var q0, out var q1, out var q2, out var q3);
                    (q0 + off).Store(ui + 128 * h);
                    (q1 + off).Store(ui + 128 * h + 32);
                    (q2 + off).Store(ui + 128 * h + 64);
                    (q3 + off).Store(ui + 128 * h + 96);
                }
            }
            else
            {
                var block = new ReadOnlySpan<byte>(blk, BlockLayout.Q6_K.Bytes);
                for (int e = 0; e < BlockLayout.QK_K; e++) ui[e] = (byte)(BlockDecode.Q6_KQuant(block, e) - 32 + 128);
            }
        }
    }

    // ---------------------------------------------------------------- the tile

    /// <summary>
    /// Y[t·yStride + r] for the packed rows (r in [0, pw.Rows)) and tokens t in [0, n) of <paramref name="pa"/>
    /// (n ≤ 8·pa.Groups), starting at token group <paramref name="g0"/>. <paramref name="isa"/> is Avx2 or AvxVnni.
    /// </summary>
    public static void Tile(PackedWeights pw, PackedActivations pa, int g0, int n, bool mins, float* y, long yStride, IntDot.Isa isa)
    {
        int nsb = pw.Cols / pw.SubBlockSize, kq = pw.SubBlockSize / 4;
        for (int rg = 0; rg < pw.RowGroups; rg++)
        {
            int nr = Math.Min(R, pw.Rows - rg * R);
            byte* wq = pw.Q + rg * pw.GroupStride;
            float* ws = pw.S + (long)rg * nsb * R, wm = pw.M + (long)rg * nsb * R;
            int t = 0;
            for (; t < n; t += 2 * G)
            {
                int g = g0 + t / G;
                int nt = Math.Min(2 * G, n - t);
                var a0 = new Act(pa, g);
                var a1 = nt > G ? new Act(pa, g + 1) : a0;
                float* yt = y + t * yStride + rg * R;
                if (isa == IntDot.Isa.AvxVnni)
                {
                    if (nt > G) Kernel4x16<IntDot.VnniPath>(wq, ws, wm, a0, a1, nsb, kq, mins, yt, yStride, nr, nt);
                    else Kernel4x8<IntDot.VnniPath>(wq, ws, wm, a0, nsb, kq, mins, yt, yStride, nr, nt);
                }
                else
                {
                    if (nt > G) Kernel4x16<IntDot.Avx2Path>(wq, ws, wm, a0, a1, nsb, kq, mins, yt, yStride, nr, nt);
                    else Kernel4x8<IntDot.Avx2Path>(wq, ws, wm, a0, nsb, kq, mins, yt, yStride, nr, nt);
                }
            }
        }
    }

    /// <summary>Pointers to one token group's packed activations.</summary>
    internal readonly struct Act
    {
        public readonly sbyte* Q;
        public readonly int* C;
        public readonly float* D;
        public readonly float* M;

        public Act(PackedActivations p, int g)
        {
            long o = (long)g * p.SubBlocks * G;
            Q = p.Q + g * p.GroupStride;
            C = p.C + o;
            D = p.D + o;
            M = p.M + o;
        }
    }

    /// <summary>
    /// Σ over 4 bytes of u·a per int32 lane. VNNI: vpdpbusd. AVX2: the u bytes are offset weights q + 128, so
    /// maddubs could saturate; instead q = u ^ 0x80 and |q|·sign(a, q) (pairs ≤ 2·128·127 &lt; 32767), which
    /// gives Σ q·a directly: the AVX2 accumulators start at 0, not at -128·Σa.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Dp<TI>(Vector256<int> acc, Vector256<byte> u, Vector256<sbyte> a) where TI : struct, IntDot.IIsa
    {
        if (TI.Vnni) return AvxVnni.MultiplyWideningAndAdd(acc, u, a);
        var q = (u ^ Vector256.Create((byte)0x80)).AsSByte();
        return Avx2.Add(acc, Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(Avx2.Abs(q), Avx2.Sign(a, q)), Vector256.Create((short)1)));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Init<TI>(int* c) where TI : struct, IntDot.IIsa =>
        TI.Vnni ? Vector256.Load(c) : Vector256<int>.Zero;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> Bcast(byte* p) => Vector256.Create(*(int*)p).AsByte();

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel4x16<TI>(byte* wq, float* ws, float* wm, Act a0, Act a1, int nsb, int kq, bool mins,
        float* y, long ys, int nr, int nt) where TI : struct, IntDot.IIsa
    {
        Vector256<float> f00 = default, f01 = default, f10 = default, f11 = default;
        Vector256<float> f20 = default, f21 = default, f30 = default, f31 = default;
        sbyte* q0 = a0.Q, q1 = a1.Q;
        for (int s = 0; s < nsb; s++)
        {
            var c0 = Init<TI>(a0.C + s * G);
            var c1 = Init<TI>(a1.C + s * G);
            Vector256<int> i00 = c0, i01 = c1, i10 = c0, i11 = c1, i20 = c0, i21 = c1, i30 = c0, i31 = c1;
            for (int k = 0; k < kq; k += 2)
            {
                // Two quads per iteration: 16 dot instructions, 4 activation and 8 weight loads.
                var x0 = Vector256.Load(q0);
                var x1 = Vector256.Load(q1);
                var w = Bcast(wq);
                i00 = Dp<TI>(i00, w, x0); i01 = Dp<TI>(i01, w, x1);
                w = Bcast(wq + 4);
                i10 = Dp<TI>(i10, w, x0); i11 = Dp<TI>(i11, w, x1);
                w = Bcast(wq + 8);
                i20 = Dp<TI>(i20, w, x0); i21 = Dp<TI>(i21, w, x1);
                w = Bcast(wq + 12);
                i30 = Dp<TI>(i30, w, x0); i31 = Dp<TI>(i31, w, x1);
                x0 = Vector256.Load(q0 + 32);
                x1 = Vector256.Load(q1 + 32);
                w = Bcast(wq + 16);
                i00 = Dp<TI>(i00, w, x0); i01 = Dp<TI>(i01, w, x1);
                w = Bcast(wq + 20);
                i10 = Dp<TI>(i10, w, x0); i11 = Dp<TI>(i11, w, x1);
                w = Bcast(wq + 24);
                i20 = Dp<TI>(i20, w, x0); i21 = Dp<TI>(i21, w, x1);
                w = Bcast(wq + 28);
                i30 = Dp<TI>(i30, w, x0); i31 = Dp<TI>(i31, w, x1);
                wq += 32; q0 += 64; q1 += 64;
            }
            var d0 = Vector256.Load(a0.D + s * G);
            var d1 = Vector256.Load(a1.D + s * G);
            float* sc = ws + s * R;
            var r = Vector256.Create(sc[0]);
            f00 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i00), r * d0, f00);
            f01 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i01), r * d1, f01);
            r = Vector256.Create(sc[1]);
            f10 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i10), r * d0, f10);
            f11 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i11), r * d1, f11);
            r = Vector256.Create(sc[2]);
            f20 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i20), r * d0, f20);
            f21 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i21), r * d1, f21);
            r = Vector256.Create(sc[3]);
            f30 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i30), r * d0, f30);
            f31 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i31), r * d1, f31);
            if (mins)
            {
                var m0 = Vector256.Load(a0.M + s * G);
                var m1 = Vector256.Load(a1.M + s * G);
                float* mn = wm + s * R;
                r = Vector256.Create(mn[0]);
                f00 = Fma.MultiplyAdd(r, m0, f00); f01 = Fma.MultiplyAdd(r, m1, f01);
                r = Vector256.Create(mn[1]);
                f10 = Fma.MultiplyAdd(r, m0, f10); f11 = Fma.MultiplyAdd(r, m1, f11);
                r = Vector256.Create(mn[2]);
                f20 = Fma.MultiplyAdd(r, m0, f20); f21 = Fma.MultiplyAdd(r, m1, f21);
                r = Vector256.Create(mn[3]);
                f30 = Fma.MultiplyAdd(r, m0, f30); f31 = Fma.MultiplyAdd(r, m1, f31);
            }
        }
        Store(f00, f10, f20, f30, y, ys, nr, Math.Min(nt, G));
        Store(f01, f11, f21, f31, y + G * ys, ys, nr, nt - G);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel4x8<TI>(byte* wq, float* ws, float* wm, Act a0, int nsb, int kq, bool mins,
        float* y, long ys, int nr, int nt) where TI : struct, IntDot.IIsa
    {
        Vector256<float> f0 = default, f1 = default, f2 = default, f3 = default;
        sbyte* q0 = a0.Q;
        for (int s = 0; s < nsb; s++)
        {
            var c0 = Init<TI>(a0.C + s * G);
            Vector256<int> i0 = c0, i1 = c0, i2 = c0, i3 = c0;
            for (int k = 0; k < kq; k++)
            {
                var x0 = Vector256.Load(q0);
                i0 = Dp<TI>(i0, Bcast(wq), x0);
                i1 = Dp<TI>(i1, Bcast(wq + 4), x0);
                i2 = Dp<TI>(i2, Bcast(wq + 8), x0);
                i3 = Dp<TI>(i3, Bcast(wq + 12), x0);
                wq += 16; q0 += 32;
            }
            var d0 = Vector256.Load(a0.D + s * G);
            float* sc = ws + s * R;
            f0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i0), Vector256.Create(sc[0]) * d0, f0);
            f1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i1), Vector256.Create(sc[1]) * d0, f1);
            f2 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i2), Vector256.Create(sc[2]) * d0, f2);
            f3 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i3), Vector256.Create(sc[3]) * d0, f3);
            if (mins)
            {
                var m0 = Vector256.Load(a0.M + s * G);
                float* mn = wm + s * R;
                f0 = Fma.MultiplyAdd(Vector256.Create(mn[0]), m0, f0);
                f1 = Fma.MultiplyAdd(Vector256.Create(mn[1]), m0, f1);
                f2 = Fma.MultiplyAdd(Vector256.Create(mn[2]), m0, f2);
                f3 = Fma.MultiplyAdd(Vector256.Create(mn[3]), m0, f3);
            }
        }
        Store(f0, f1, f2, f3, y, ys, nr, nt);
    }

    /// <summary>Writes rows' lanes (lane i = token i) to y[i·ys + row], for the valid rows and tokens only.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Store(Vector256<float> f0, Vector256<float> f1, Vector256<float> f2, Vector256<float> f3,
        float* y, long ys, int nr, int nt)
    {
        float* tmp = stackalloc float[4 * G];
        f0.Store(tmp); f1.Store(tmp + G); f2.Store(tmp + 2 * G); f3.Store(tmp + 3 * G);
        for (int i = 0; i < nt; i++)
            for (int r = 0; r < nr; r++)
                y[i * ys + r] = tmp[r * G + i];
    }
}
