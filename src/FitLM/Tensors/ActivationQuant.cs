using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace FitLM.Tensors;

/// <summary>
/// The block format activations are quantized to before an integer dot product with a weight row: ggml's
/// vec_dot_type of the weight type (q4_0/q5_0/q8_0 → q8_0; q4_1/q5_1 → q8_1; k-quants → q8_K). F32 means the
/// weights are multiplied with float activations (F32, F16, BF16 weights).
/// </summary>
internal enum ActFormat { F32, Q8_0, Q8_1, Q8_K }

/// <summary>
/// One token's quantized activations, as arrays (structure of arrays rather than ggml's interleaved blocks, so
/// the kernels load 32 quants at an aligned address and the scales as floats). Which arrays are set depends on
/// the format: Q8_0/Q8_1 fill Q, D (one per 32), Sum and S; Q8_K fills Q, D (one per 256) and BSums.
/// </summary>
internal readonly unsafe struct ActRow
{
    /// <summary>The int8 quants, in element order.</summary>
    public readonly sbyte* Q;
    /// <summary>Block scale as float: fp16-rounded d for Q8_0/Q8_1 (one per 32), float d for Q8_K (one per 256).</summary>
    public readonly float* D;
    /// <summary>Q8_0/Q8_1: Σq of each 32-block (exact), for the zero-point corrections of unsigned dot products.</summary>
    public readonly int* Sum;
    /// <summary>Q8_1: ggml's s = fp16(d·Σq) of each 32-block, as float.</summary>
    public readonly float* S;
    /// <summary>Q8_K: Σq of each 16 quants (ggml's bsums).</summary>
    public readonly short* BSums;

    // Kernel-side extras for the decode kernels of one weight type (see QuantizedActivations.PrepareFor):
    // precomputed so that a kernel loads them instead of computing them per row.

    /// <summary>Per 32-block: the zero-point correction -k·Σq of the weight type's unsigned quants (k = 128, 8, 16 or 0).</summary>
    public readonly int* Z;
    /// <summary>q8_0 and the nibble types: the quants of block pairs (2p, 2p+1) interleaved by halves: 0-15 of each, then 16-31 of each.</summary>
    public readonly sbyte* QP;
    /// <summary>q8_0 and the nibble types: per block pair, [d(2p)×4, d(2p+1)×4].</summary>
    public readonly float* DP;
    /// <summary>q8_0 and the nibble types: per block pair, [z(2p), 0, 0, 0, z(2p+1), 0, 0, 0].</summary>
    public readonly int* ZP;
    /// <summary>q8_0: <see cref="QP"/> offset to unsigned (q + 128), the operand vpdpbusd needs unsigned.</summary>
    public readonly byte* QU;

    public ActRow(sbyte* q, float* d, int* sum, float* s, short* bsums)
    {
        Q = q; D = d; Sum = sum; S = s; BSums = bsums;
    }

    internal ActRow(ActRow r, int* z, sbyte* qp, float* dp, int* zp, byte* qu)
    {
        this = r;
        Z = z; QP = qp; DP = dp; ZP = zp; QU = qu;
    }
}

/// <summary>
/// Quantized activations of n tokens × cols elements in native memory that is kept and reused: a buffer grows
/// on first use to the largest shape seen and is never shrunk, so quantizing per call allocates nothing.
/// </summary>
internal sealed unsafe class QuantizedActivations : IDisposable
{
    private byte* _mem;
    private long _capacity;

    public ActFormat Format { get; private set; }
    public int Cols { get; private set; }
    public int Count { get; private set; }

    internal sbyte* Q;
    internal float* D;
    internal int* Sum;
    internal float* S;
    internal short* BSums;

    // Decode extras (PrepareFor), in a second buffer.
    private byte* _extra;
    private long _extraCapacity;
    private GgmlType _preparedFor;
    private bool _prepared;
    internal int* Z;
    internal sbyte* QP;
    internal float* DP;
    internal int* ZP;
    internal byte* QU;

    /// <summary>Blocks per token that D holds (cols/32 or cols/256).</summary>
    public int BlocksPerRow => Format == ActFormat.Q8_K ? Cols / BlockLayout.QK_K : Cols / BlockLayout.QK;

    public ActRow Row(int t)
    {
        if ((uint)t >= (uint)Count) throw new ArgumentOutOfRangeException(nameof(t));
        long nb = BlocksPerRow;
        if (Format == ActFormat.Q8_K)
            return new ActRow(Q + (long)t * Cols, D + t * nb, null, null, BSums + (long)t * (Cols / 16));
        var r = new ActRow(Q + (long)t * Cols, D + t * nb, Sum + t * nb, S + t * nb, null);
        if (!_prepared) return r;
        long np = nb / 2;
        return new ActRow(r, Z + t * nb, QP == null ? null : QP + (long)t * Cols, DP == null ? null : DP + t * np * 8, ZP == null ? null : ZP + t * np * 8,
            QU == null ? null : QU + (long)t * Cols);
    }

    /// <summary>
    /// Computes the decode kernels' extras for weights of <paramref name="weightType"/> (after quantizing): the
    /// per-block zero-point corrections, and for q8_0/q4_0/q5_0/q4_1/q5_1 the block-pair layout that lets one
    /// 256-bit register hold the low (or high) nibbles of two blocks.
    /// </summary>
    internal void PrepareFor(GgmlType weightType)
    {
        _prepared = false;
        _preparedFor = weightType;
        if (Format == ActFormat.Q8_K) return;
        int k = weightType switch { GgmlType.Q8_0 => 128, GgmlType.Q4_0 => 8, GgmlType.Q5_0 => 16, _ => 0 };
        bool pairs = weightType is GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q5_0 or GgmlType.Q4_1 or GgmlType.Q5_1;
        int nb = Cols / 32, np = nb / 2;
        long zBytes = Align((long)nb * Count * 4), qpBytes = pairs ? Align((long)Cols * Count) : 0, vBytes = pairs ? Align((long)np * Count * 32) : 0;
        long quBytes = weightType == GgmlType.Q8_0 ? qpBytes : 0;
        long need = zBytes + qpBytes + 2 * vBytes + quBytes;
        if (need > _extraCapacity)
        {
            if (_extra != null) NativeMemory.AlignedFree(_extra);
            _extra = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(need, 64), 64);
            _extraCapacity = need;
        }
        Z = (int*)_extra;
        QP = pairs ? (sbyte*)(_extra + zBytes) : null;
        DP = pairs ? (float*)(_extra + zBytes + qpBytes) : null;
        ZP = pairs ? (int*)(_extra + zBytes + qpBytes + vBytes) : null;
        QU = quBytes > 0 ? _extra + zBytes + qpBytes + 2 * vBytes : null;
        for (int t = 0; t < Count; t++)
        {
            int* sum = Sum + (long)t * nb, z = Z + (long)t * nb;
            float* d = D + (long)t * nb;
            for (int b = 0; b < nb; b++) z[b] = -k * sum[b];
            if (!pairs) continue;
            sbyte* q = Q + (long)t * Cols, qp = QP + (long)t * Cols;
            float* dp = DP + (long)t * np * 8;
            int* zp = ZP + (long)t * np * 8;
            byte* qu = QU == null ? null : QU + (long)t * Cols;
            for (int p = 0; p < np; p++)
            {
                // [first 16 of block 2p | first 16 of block 2p+1], then the last 16 of each (see ActRow.QP).
                long b0 = 64L * p;
                var v0 = Vector256.Load(q + b0);
                var v1 = Vector256.Load(q + b0 + 32);
                var lo = Vector256.Create(v0.GetLower(), v1.GetLower());
                var hi = Vector256.Create(v0.GetUpper(), v1.GetUpper());
                lo.Store(qp + b0);
                hi.Store(qp + b0 + 32);
                if (qu != null)
                {
                    (lo.AsByte() ^ Vector256.Create((byte)0x80)).Store(qu + b0);
                    (hi.AsByte() ^ Vector256.Create((byte)0x80)).Store(qu + b0 + 32);
                }
                Vector256.Create(Vector128.Create(d[2 * p]), Vector128.Create(d[2 * p + 1])).Store(dp + 8 * p);
                Vector256.Create(z[2 * p], 0, 0, 0, z[2 * p + 1], 0, 0, 0).Store(zp + 8 * p);
            }
        }
        _prepared = true;
    }

    /// <summary>The weight type the extras were last prepared for (tests).</summary>
    internal GgmlType PreparedFor => _preparedFor;

    /// <summary>Sets the shape, growing the buffer if needed; the contents are undefined until quantized.</summary>
    internal void Reshape(ActFormat format, int cols, int count)
    {
        long qBytes = Align((long)cols * count);
        long nb32 = (long)(cols / 32) * count, nb256 = (long)(cols / 256) * count, n16 = (long)(cols / 16) * count;
        long need = format == ActFormat.Q8_K
            ? qBytes + Align(nb256 * 4) + Align(n16 * 2)
            : qBytes + 3 * Align(nb32 * 4);
        if (need > _capacity)
        {
            Free();
            _mem = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(need, 64), 64);
            _capacity = need;
        }
        Format = format; Cols = cols; Count = count;
        _prepared = false;
        byte* p = _mem;
        Q = (sbyte*)p; p += qBytes;
        if (format == ActFormat.Q8_K)
        {
            D = (float*)p; p += Align(nb256 * 4);
            BSums = (short*)p;
            Sum = null; S = null;
        }
        else
        {
            D = (float*)p; p += Align(nb32 * 4);
            Sum = (int*)p; p += Align(nb32 * 4);
            S = (float*)p;
            BSums = null;
        }
    }

    private static long Align(long n) => (n + 63) & ~63L;

    private void Free()
    {
        if (_mem != null) NativeMemory.AlignedFree(_mem);
        if (_extra != null) NativeMemory.AlignedFree(_extra);
        _mem = null;
        _extra = null;
        _capacity = 0;
        _extraCapacity = 0;
    }

    public void Dispose()
    {
        Free();
        GC.SuppressFinalize(this);
    }

    ~QuantizedActivations() => Free();
}

/// <summary>
/// Quantization of float activations to q8_0 / q8_1 / q8_K, value for value as llama.cpp does it on x86 (so
/// integer dot products give llama.cpp's numbers):
/// q8_0 and q8_1 follow ggml-cpu's AVX2 quantize_row_q8_0/q8_1 (x86 build), which differ from the reference
/// quantize_row_q8_0_ref in two details: the multiplier is 127/amax (not 1/d) and rounding is to nearest even
/// (_mm256_round_ps), not away from zero. d is stored as fp16; q8_1's s is fp16(d·Σq) with the unrounded d.
/// q8_K has no x86 variant: it is quantize_row_q8_K_ref (the largest-magnitude element, first on ties, maps to
/// -127; iscale = -127/max; q = min(127, nearest_int(iscale·x)); d = 1/iscale as float; bsums per 16).
/// Each has a scalar reference (the definition) and a vectorized path that must agree with it bit for bit.
/// </summary>
internal static unsafe class ActivationQuant
{
    /// <summary>ggml's vec_dot_type: the activation format each weight type's dot product pairs with.</summary>
    public static ActFormat FormatFor(GgmlType weight) => weight switch
    {
        GgmlType.Q4_0 or GgmlType.Q5_0 or GgmlType.Q8_0 => ActFormat.Q8_0,
        GgmlType.Q4_1 or GgmlType.Q5_1 => ActFormat.Q8_1,
        GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K => ActFormat.Q8_K,
        _ => ActFormat.F32,
    };

    /// <summary>
    /// Quantizes for weights of <paramref name="weightType"/> (format <see cref="FormatFor"/>) and prepares the
    /// decode kernels' extras (<see cref="QuantizedActivations.PrepareFor"/>): what <see cref="IntDot"/> needs.
    /// </summary>
    public static void Quantize(GgmlType weightType, float* x, int cols, int n, QuantizedActivations dst, bool vector = true)
    {
        var format = FormatFor(weightType);
        if (format == ActFormat.F32) throw new ArgumentException($"{weightType} weights take float activations");
        Quantize(format, x, cols, n, dst, vector);
        dst.PrepareFor(weightType);
    }

    /// <summary>Whether the vectorized quantizers can run (AVX2).</summary>
    public static bool VectorSupported => Avx2.IsSupported;

    /// <summary>
    /// Quantizes n rows of <paramref name="cols"/> floats (row t at x + t·cols) into <paramref name="dst"/>.
    /// cols must be a multiple of the block size (32, or 256 for Q8_K).
    /// </summary>
    public static void Quantize(ActFormat format, float* x, int cols, int n, QuantizedActivations dst, bool vector = true)
    {
        Shape(format, cols, n, dst);
        QuantizeRows(format, x, cols, 0, n, dst, vector);
    }

    /// <summary>Sizes <paramref name="dst"/> for n rows of <paramref name="cols"/>; then <see cref="QuantizeRows"/> fills any rows, on any thread.</summary>
    internal static void Shape(ActFormat format, int cols, int n, QuantizedActivations dst)
    {
        int bs = format == ActFormat.Q8_K ? BlockLayout.QK_K : BlockLayout.QK;
        if (format == ActFormat.F32) throw new ArgumentException("F32 activations are not quantized");
        if (cols % bs != 0) throw new FitLMException($"activation quantization: {cols} elements are not a whole number of {bs}-element blocks");
        dst.Reshape(format, cols, n);
    }

    /// <summary>Quantizes rows [t0, t1) (row t at x + t·cols) into <paramref name="dst"/>, shaped by <see cref="Shape"/>.</summary>
    internal static void QuantizeRows(ActFormat format, float* x, int cols, int t0, int t1, QuantizedActivations dst, bool vector = true)
    {
        vector &= VectorSupported;
        for (int t = t0; t < t1; t++)
        {
            var r = dst.Row(t);
            float* xr = x + (long)t * cols;
            if (format == ActFormat.Q8_K)
            {
                if (vector) Q8_KVector(xr, cols, r); else Q8_KScalar(xr, cols, r);
            }
            else
            {
                if (vector) Q8_0Vector(xr, cols, r); else Q8_0Scalar(xr, cols, r);
            }
        }
    }

    /// <summary>fp16 rounding (to nearest even, as F16C's _cvtss_sh / GGML_FP32_TO_FP16), back to float.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float RoundToHalf(float v) => (float)(Half)v;

    // ---------------------------------------------------------------- q8_0 / q8_1

    /// <summary>Scalar definition of q8_0 and q8_1 (they share d and the quants; q8_1 adds s), per 32-block.</summary>
    internal static void Q8_0Scalar(float* x, int cols, ActRow r)
    {
        for (int b = 0; b < cols / 32; b++)
        {
            float* xb = x + 32 * b;
            float amax = 0;
            for (int j = 0; j < 32; j++) amax = MathF.Max(amax, MathF.Abs(xb[j]));
            float d = amax / 127f;
            float id = amax != 0 ? 127f / amax : 0f;
            int sum = 0;
            for (int j = 0; j < 32; j++)
            {
                int q = (int)MathF.Round(xb[j] * id, MidpointRounding.ToEven);
                r.Q[32 * b + j] = (sbyte)q;
                sum += q;
            }
            r.D[b] = RoundToHalf(d);
            r.Sum[b] = sum;
            r.S[b] = RoundToHalf(d * sum);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Q8_0Vector(float* x, int cols, ActRow r)
    {
        var absMask = Vector256.Create(0x7FFFFFFF).AsSingle();
        for (int b = 0; b < cols / 32; b++)
        {
            float* xb = x + 32 * b;
            var v0 = Avx.LoadVector256(xb);
            var v1 = Avx.LoadVector256(xb + 8);
            var v2 = Avx.LoadVector256(xb + 16);
            var v3 = Avx.LoadVector256(xb + 24);
            var m = Avx.Max(Avx.Max(v0 & absMask, v1 & absMask), Avx.Max(v2 & absMask, v3 & absMask));
            var m4 = Sse.Max(m.GetLower(), m.GetUpper());
            m4 = Sse.Max(m4, Sse.MoveHighToLow(m4, m4));
            m4 = Sse.MaxScalar(m4, Sse3.MoveHighAndDuplicate(m4));
            float amax = m4.ToScalar();
            float d = amax / 127f;
            var mul = Vector256.Create(amax != 0 ? 127f / amax : 0f);
            // vroundps to nearest even, then an exact conversion of the (integral) result.
            var i0 = Avx.ConvertToVector256Int32WithTruncation(Avx.RoundToNearestInteger(v0 * mul));
            var i1 = Avx.ConvertToVector256Int32WithTruncation(Avx.RoundToNearestInteger(v1 * mul));
            var i2 = Avx.ConvertToVector256Int32WithTruncation(Avx.RoundToNearestInteger(v2 * mul));
            var i3 = Avx.ConvertToVector256Int32WithTruncation(Avx.RoundToNearestInteger(v3 * mul));
            int sum = Vector256.Sum((i0 + i1) + (i2 + i3));
            // packs works within 128-bit lanes; the dword permutation restores element order (as ggml does).
            var p01 = Avx2.PackSignedSaturate(i0, i1);
            var p23 = Avx2.PackSignedSaturate(i2, i3);
            var p = Avx2.PackSignedSaturate(p01, p23);
            p = Avx2.PermuteVar8x32(p.AsInt32(), Vector256.Create(0, 4, 1, 5, 2, 6, 3, 7)).AsSByte();
            p.Store(r.Q + 32 * b);
            r.D[b] = d;
            r.Sum[b] = sum;
            r.S[b] = d * sum;
        }
        // The fp16 rounding of the scales, a row at a time: a call of (Half)v per scale was 13% of a q4_0 prefill
        // (llama-0.8b pp512, perf), the worker waiting for it another 7-10%.
        HalfRounding.Round(r.D, cols / 32);
        HalfRounding.Round(r.S, cols / 32);
    }

    // ---------------------------------------------------------------- q8_K

    /// <summary>ggml's nearest_int: round to nearest, ties to even (|v| &lt; 2^22), via the 1.5·2^23 trick.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int NearestInt(float v)
    {
        float t = v + 12582912f;
        return (BitConverter.SingleToInt32Bits(t) & 0x007fffff) - 0x00400000;
    }

    /// <summary>Scalar definition of q8_K (quantize_row_q8_K_ref), per 256-block.</summary>
    internal static void Q8_KScalar(float* x, int cols, ActRow r)
    {
        for (int b = 0; b < cols / 256; b++)
        {
            float* xb = x + 256 * b;
            sbyte* q = r.Q + 256 * b;
            short* bsums = r.BSums + 16 * b;
            float amax = 0, max = 0;
            for (int j = 0; j < 256; j++)
            {
                float ax = MathF.Abs(xb[j]);
                if (ax > amax) { amax = ax; max = xb[j]; }
            }
            if (amax == 0)
            {
                r.D[b] = 0;
                new Span<sbyte>(q, 256).Clear();
                new Span<short>(bsums, 16).Clear();
                continue;
            }
            float iscale = -127f / max;
            for (int j = 0; j < 256; j++) q[j] = (sbyte)Math.Min(127, NearestInt(iscale * xb[j]));
            for (int g = 0; g < 16; g++)
            {
                int s = 0;
                for (int j = 0; j < 16; j++) s += q[16 * g + j];
                bsums[g] = (short)s;
            }
            r.D[b] = 1 / iscale;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Q8_KVector(float* x, int cols, ActRow r)
    {
        var absMask = Vector256.Create(0x7FFFFFFF).AsSingle();
        for (int b = 0; b < cols / 256; b++)
        {
            float* xb = x + 256 * b;
            sbyte* q = r.Q + 256 * b;
            short* bsums = r.BSums + 16 * b;
            var m = Vector256<float>.Zero;
            for (int j = 0; j < 256; j += 8) m = Avx.Max(m, Avx.LoadVector256(xb + j) & absMask);
            var m4 = Sse.Max(m.GetLower(), m.GetUpper());
            m4 = Sse.Max(m4, Sse.MoveHighToLow(m4, m4));
            m4 = Sse.MaxScalar(m4, Sse3.MoveHighAndDuplicate(m4));
            float amax = m4.ToScalar();
            if (amax == 0)
            {
                r.D[b] = 0;
                new Span<sbyte>(q, 256).Clear();
                new Span<short>(bsums, 16).Clear();
                continue;
            }
            // The reference keeps the first element of largest magnitude, with its sign.
            var am = Vector256.Create(amax);
            float max = amax;
            for (int j = 0; j < 256; j += 8)
            {
                var v = Avx.LoadVector256(xb + j);
                uint hit = Vector256.Equals(v & absMask, am).ExtractMostSignificantBits();
                if (hit != 0) { max = xb[j + System.Numerics.BitOperations.TrailingZeroCount(hit)]; break; }
            }
            float iscale = -127f / max;
            var mul = Vector256.Create(iscale);
            var lim = Vector256.Create(127);
            var ones = Vector256.Create((short)1);
            for (int j = 0; j < 256; j += 32)
            {
                // nearest_int is round-to-nearest-even for these magnitudes (|v| ≤ 127): vroundps gives the same.
                var i0 = Avx2.Min(Avx.ConvertToVector256Int32WithTruncation(Avx.RoundToNearestInteger(Avx.LoadVector256(xb + j) * mul)), lim);
                var i1 = Avx2.Min(Avx.ConvertToVector256Int32WithTruncation(Avx.RoundToNearestInteger(Avx.LoadVector256(xb + j + 8) * mul)), lim);
                var i2 = Avx2.Min(Avx.ConvertToVector256Int32WithTruncation(Avx.RoundToNearestInteger(Avx.LoadVector256(xb + j + 16) * mul)), lim);
                var i3 = Avx2.Min(Avx.ConvertToVector256Int32WithTruncation(Avx.RoundToNearestInteger(Avx.LoadVector256(xb + j + 24) * mul)), lim);
                var p01 = Avx2.PackSignedSaturate(i0, i1); // lanes: 0-3 8-11 | 4-7 12-15
                var p23 = Avx2.PackSignedSaturate(i2, i3);
                // Sums of 16: elements 0..15 are i0,i1; 16..31 are i2,i3. madd with ones sums int16 pairs.
                var s01 = Avx2.MultiplyAddAdjacent(p01, ones);
                var s23 = Avx2.MultiplyAddAdjacent(p23, ones);
                var hs = Avx2.HorizontalAdd(s01, s23); // [s01 pairs lane0, s23 pairs lane0 | lane1 ...]
                // Each 128-bit lane of hs: 2 partial sums of block A (j..j+15) then 2 of block B; lanes add up.
                var lanes = Sse2.Add(hs.GetLower(), hs.GetUpper()); // [a0, a1, b0, b1]
                bsums[j / 16] = (short)(lanes.GetElement(0) + lanes.GetElement(1));
                bsums[j / 16 + 1] = (short)(lanes.GetElement(2) + lanes.GetElement(3));
                var p = Avx2.PackSignedSaturate(p01, p23);
                p = Avx2.PermuteVar8x32(p.AsInt32(), Vector256.Create(0, 4, 1, 5, 2, 6, 3, 7)).AsSByte();
                p.Store(q + j);
            }
            r.D[b] = 1 / iscale;
        }
    }

    // ---------------------------------------------------------------- ggml block images (for tests and tools)

    /// <summary>
    /// Writes token <paramref name="t"/> as ggml blocks (block_q8_0 / block_q8_1 / block_q8_K bytes), to compare
    /// with ggml's own encoders.
    /// </summary>
    public static void ToGgmlBlocks(QuantizedActivations a, int t, Span<byte> dst)
    {
        var r = a.Row(t);
        int cols = a.Cols;
        switch (a.Format)
        {
            case ActFormat.Q8_0:
                for (int b = 0; b < cols / BlockLayout.QK; b++)
                {
                    var blk = dst.Slice(BlockLayout.Q8_0.Bytes * b, BlockLayout.Q8_0.Bytes);
                    BitConverter.TryWriteBytes(blk[BlockLayout.Q8_0.D..], BitConverter.HalfToUInt16Bits((Half)r.D[b]));
                    new ReadOnlySpan<byte>(r.Q + BlockLayout.QK * b, BlockLayout.QK).CopyTo(blk[BlockLayout.Q8_0.Qs..]);
                }
                break;
            case ActFormat.Q8_1:
                for (int b = 0; b < cols / BlockLayout.QK; b++)
                {
                    var blk = dst.Slice(BlockLayout.Q8_1.Bytes * b, BlockLayout.Q8_1.Bytes);
                    BitConverter.TryWriteBytes(blk[BlockLayout.Q8_1.D..], BitConverter.HalfToUInt16Bits((Half)r.D[b]));
                    BitConverter.TryWriteBytes(blk[BlockLayout.Q8_1.S..], BitConverter.HalfToUInt16Bits((Half)r.S[b]));
                    new ReadOnlySpan<byte>(r.Q + BlockLayout.QK * b, BlockLayout.QK).CopyTo(blk[BlockLayout.Q8_1.Qs..]);
                }
                break;
            case ActFormat.Q8_K:
                for (int b = 0; b < cols / BlockLayout.QK_K; b++)
                {
                    var blk = dst.Slice(BlockLayout.Q8_K.Bytes * b, BlockLayout.Q8_K.Bytes);
                    BitConverter.TryWriteBytes(blk[BlockLayout.Q8_K.D..], r.D[b]);
                    new ReadOnlySpan<byte>(r.Q + BlockLayout.QK_K * b, BlockLayout.QK_K).CopyTo(blk[BlockLayout.Q8_K.Qs..]);
                    const int sums = BlockLayout.QK_K / BlockLayout.Q8_K.SubBlock;
                    MemoryMarshal.AsBytes(new ReadOnlySpan<short>(r.BSums + sums * b, sums)).CopyTo(blk[BlockLayout.Q8_K.BSums..]);
                }
                break;
            default:
                throw new ArgumentException("not a quantized format");
        }
    }
}
