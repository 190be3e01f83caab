using System.Buffers.Binary;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace FitLM.Tensors;

/// <summary>
/// Quantization of float32 rows into ggml block formats. Each quantizer follows ggml's reference
/// quantizer (quantize_row_*_ref in ggml-quants.c: no importance matrix), step by step in float32, so the
/// bytes are those llama.cpp writes for the same input (up to compiler floating-point contraction in
/// the k-quant search loops).
/// </summary>
public static partial class Quantize
{
    /// <summary>
    /// Quantizes <paramref name="src"/> (a multiple of the type's block size) into exactly
    /// <see cref="GgmlTypes.RowBytes"/>(type, src.Length) bytes of <paramref name="dst"/>.
    /// </summary>
    public static void Row(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst)
    {
        if (!IsSupported(type)) throw new FitLMException($"Quantize.Row: quantizing to {type} is not supported");
        Dequantize.CheckRow(type, dst.Length, src.Length, "Quantize.Row");
        switch (type)
        {
            case GgmlType.F32:
                MemoryMarshal.Cast<float, byte>(src).CopyTo(dst);
                return;
            case GgmlType.F16:
                TensorPrimitives.ConvertToHalf(src, MemoryMarshal.Cast<byte, Half>(dst));
                return;
            case GgmlType.BF16:
                {
                    var h = MemoryMarshal.Cast<byte, ushort>(dst);
                    for (int i = 0; i < src.Length; i++) h[i] = ToBF16(src[i]);
                    return;
                }
        }
        int bs = GgmlTypes.BlockSize(type), bb = GgmlTypes.BlockBytes(type);
        int blocks = src.Length / bs;
        for (int i = 0; i < blocks; i++)
        {
            var x = src.Slice(i * bs, bs);
            var y = dst.Slice(i * bb, bb);
            switch (type)
            {
                case GgmlType.Q4_0: Q4_0(x, y); break;
                case GgmlType.Q4_1: Q4_1(x, y); break;
                case GgmlType.Q5_0: Q5_0(x, y); break;
                case GgmlType.Q5_1: Q5_1(x, y); break;
                case GgmlType.Q8_0: Q8_0(x, y); break;
                case GgmlType.Q8_1: Q8_1(x, y); break;
                case GgmlType.Q2_K: Q2_K(x, y); break;
                case GgmlType.Q3_K: Q3_K(x, y); break;
                case GgmlType.Q4_K: Q4_K(x, y); break;
                case GgmlType.Q5_K: Q5_K(x, y); break;
                case GgmlType.Q6_K: Q6_K(x, y); break;
                case GgmlType.Q8_K: Q8_K(x, y); break;
            }
        }
    }

    /// <summary>Whether <see cref="Row"/> can produce <paramref name="type"/> (every type ggml numbers here).</summary>
    public static bool IsSupported(GgmlType type) => GgmlTypes.IsSupported(type);

    /// <summary>float32 to bfloat16, rounding to nearest even; NaN stays a (quiet) NaN. As ggml's GGML_FP32_TO_BF16.</summary>
    public static ushort ToBF16(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if ((u & 0x7fffffff) > 0x7f800000) return (ushort)((u >> 16) | 64);
        return (ushort)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
    }

    // ---------------------------------------------------------------- helpers

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WriteHalf(Span<byte> b, int offset, float v) =>
        BinaryPrimitives.WriteUInt16LittleEndian(b.Slice(offset, 2), BitConverter.HalfToUInt16Bits((Half)v));

    /// <summary>C's roundf: to nearest, halfway cases away from zero.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float RoundF(float v) => MathF.Round(v, MidpointRounding.AwayFromZero);

    /// <summary>ggml's nearest_int: round to nearest, ties to even, via the 1.5*2^23 trick (|v| &lt; 2^22).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int NearestInt(float v)
    {
        float t = v + 12582912f;
        return (BitConverter.SingleToInt32Bits(t) & 0x007fffff) - 0x00400000;
    }

    /// <summary>C's (int8_t) conversion of a float in range: truncation toward zero.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int TruncI8(float v) => (sbyte)(int)v;

    private const float GroupMaxEps = 1e-15f;

    /// <summary>The element with the largest magnitude (first one on ties), with its sign.</summary>
    private static float SignedAbsMax(ReadOnlySpan<float> x)
    {
        float amax = 0, max = 0;
        foreach (float v in x)
        {
            if (amax < MathF.Abs(v)) { amax = MathF.Abs(v); max = v; }
        }
        return max;
    }

    private static void PackQh(Span<byte> dst, ReadOnlySpan<int> q)
    {
        // 5th bit of element j goes to bit j of a little-endian u32 (elements 16..31 to bits 16..31).
        uint qh = 0;
        for (int j = 0; j < 32; j++) qh |= (uint)((q[j] & 0x10) >> 4) << j;
        BinaryPrimitives.WriteUInt32LittleEndian(dst, qh);
    }

    // ---------------------------------------------------------------- 32-element blocks

    /// <summary>q4_0: d = max/-8 where max is the signed largest-magnitude value; q = min(15, trunc(x/d + 8.5)).</summary>
    private static void Q4_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        float max = SignedAbsMax(x);
        float d = max / -8;
        float id = d != 0 ? 1.0f / d : 0.0f;
        WriteHalf(y, 0, d);
        var qs = y.Slice(2, 16);
        for (int j = 0; j < 16; j++)
        {
            int q0 = Math.Min(15, TruncI8(x[j] * id + 8.5f));
            int q1 = Math.Min(15, TruncI8(x[j + 16] * id + 8.5f));
            qs[j] = (byte)(q0 | (q1 << 4));
        }
    }

    /// <summary>q4_1: d = (max-min)/15, m = min; q = min(15, trunc((x-min)/d + 0.5)).</summary>
    private static void Q4_1(ReadOnlySpan<float> x, Span<byte> y)
    {
        float min = float.MaxValue, max = -float.MaxValue;
        foreach (float v in x) { if (v < min) min = v; if (v > max) max = v; }
        float d = (max - min) / 15;
        float id = d != 0 ? 1.0f / d : 0.0f;
        WriteHalf(y, 0, d);
        WriteHalf(y, 2, min);
        var qs = y.Slice(4, 16);
        for (int j = 0; j < 16; j++)
        {
            int q0 = Math.Min(15, TruncI8((x[j] - min) * id + 0.5f));
            int q1 = Math.Min(15, TruncI8((x[j + 16] - min) * id + 0.5f));
            qs[j] = (byte)(q0 | (q1 << 4));
        }
    }

    /// <summary>q5_0: d = max/-16; q = min(31, trunc(x/d + 16.5)); 5th bits packed into qh.</summary>
    private static void Q5_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        float max = SignedAbsMax(x);
        float d = max / -16;
        float id = d != 0 ? 1.0f / d : 0.0f;
        WriteHalf(y, 0, d);
        Span<int> q = stackalloc int[32];
        for (int j = 0; j < 32; j++) q[j] = Math.Min(31, TruncI8(x[j] * id + 16.5f));
        PackQh(y.Slice(2, 4), q);
        var qs = y.Slice(6, 16);
        for (int j = 0; j < 16; j++) qs[j] = (byte)((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4));
    }

    /// <summary>q5_1: d = (max-min)/31, m = min; q = trunc((x-min)/d + 0.5) (as ggml, via uint8).</summary>
    private static void Q5_1(ReadOnlySpan<float> x, Span<byte> y)
    {
        float min = float.MaxValue, max = -float.MaxValue;
        foreach (float v in x) { if (v < min) min = v; if (v > max) max = v; }
        float d = (max - min) / 31;
        float id = d != 0 ? 1.0f / d : 0.0f;
        WriteHalf(y, 0, d);
        WriteHalf(y, 2, min);
        Span<int> q = stackalloc int[32];
        for (int j = 0; j < 32; j++) q[j] = (byte)(int)((x[j] - min) * id + 0.5f);
        PackQh(y.Slice(4, 4), q);
        var qs = y.Slice(8, 16);
        for (int j = 0; j < 16; j++) qs[j] = (byte)((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4));
    }

    /// <summary>q8_0: d = amax/127; q = roundf(x/d).</summary>
    private static void Q8_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        float amax = 0;
        foreach (float v in x) amax = Math.Max(amax, MathF.Abs(v));
        float d = amax / 127;
        float id = d != 0 ? 1.0f / d : 0.0f;
        WriteHalf(y, 0, d);
        var qs = MemoryMarshal.Cast<byte, sbyte>(y.Slice(2, 32));
        for (int j = 0; j < 32; j++) qs[j] = (sbyte)RoundF(x[j] * id);
    }

    /// <summary>q8_1: as q8_0, plus s = d * sum(q) stored as half.</summary>
    private static void Q8_1(ReadOnlySpan<float> x, Span<byte> y)
    {
        float amax = 0;
        foreach (float v in x) amax = Math.Max(amax, MathF.Abs(v));
        float d = amax / 127;
        float id = d != 0 ? 1.0f / d : 0.0f;
        WriteHalf(y, 0, d);
        var qs = MemoryMarshal.Cast<byte, sbyte>(y.Slice(4, 32));
        int sum = 0;
        for (int j = 0; j < 32; j++)
        {
            qs[j] = (sbyte)RoundF(x[j] * id);
            sum += qs[j];
        }
        WriteHalf(y, 2, sum * d);
    }

    // ---------------------------------------------------------------- k-quant helpers (ggml's make_*_quants)

    /// <summary>
    /// ggml's make_qx_quants with rmse_type 1: symmetric quants L in 0..2*nmax-1 (stored with +nmax),
    /// weights <paramref name="qw"/> (x^2 when empty), trying 19 scales around nmax/max. Returns the scale.
    /// </summary>
    private static float MakeQxQuants(ReadOnlySpan<float> x, int nmax, Span<sbyte> L, ReadOnlySpan<float> qw = default)
    {
        int n = x.Length;
        float max = 0, amax = 0;
        for (int i = 0; i < n; i++)
        {
            float ax = MathF.Abs(x[i]);
            if (ax > amax) { amax = ax; max = x[i]; }
        }
        if (amax < GroupMaxEps)
        {
            L[..n].Clear();
            return 0f;
        }
        float iscale = -nmax / max;
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; i++)
        {
            int l = Math.Max(-nmax, Math.Min(nmax - 1, NearestInt(iscale * x[i])));
            L[i] = (sbyte)(l + nmax);
            float w = qw.IsEmpty ? x[i] * x[i] : qw[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
        float best = scale * sumlx;
        for (int step = -9; step <= 9; step++)
        {
            if (step == 0) continue;
            iscale = -(nmax + 0.1f * step) / max;
            sumlx = suml2 = 0;
            for (int i = 0; i < n; i++)
            {
                int l = Math.Max(-nmax, Math.Min(nmax - 1, NearestInt(iscale * x[i])));
                float w = qw.IsEmpty ? x[i] * x[i] : qw[i];
                sumlx += w * x[i] * l;
                suml2 += w * l * l;
            }
            if (suml2 > 0 && sumlx * sumlx > best * suml2)
            {
                for (int i = 0; i < n; i++)
                {
                    int l = NearestInt(iscale * x[i]);
                    L[i] = (sbyte)(nmax + Math.Max(-nmax, Math.Min(nmax - 1, l)));
                }
                scale = sumlx / suml2;
                best = scale * sumlx;
            }
        }
        return scale;
    }

    /// <summary>
    /// ggml's make_q3_quants with do_rmse: symmetric quants in -nmax..nmax-1 (stored +nmax), refined by
    /// up to 5 coordinate-descent passes on the weighted (x^2) error. Returns the scale.
    /// </summary>
    private static float MakeQ3Quants(ReadOnlySpan<float> x, int nmax, Span<sbyte> L)
    {
        int n = x.Length;
        float max = 0, amax = 0;
        for (int i = 0; i < n; i++)
        {
            float ax = MathF.Abs(x[i]);
            if (ax > amax) { amax = ax; max = x[i]; }
        }
        if (amax < GroupMaxEps)
        {
            L[..n].Clear();
            return 0f;
        }
        float iscale = -nmax / max;
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; i++)
        {
            int l = Math.Max(-nmax, Math.Min(nmax - 1, NearestInt(iscale * x[i])));
            L[i] = (sbyte)l;
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        for (int itry = 0; itry < 5; itry++)
        {
            int changed = 0;
            for (int i = 0; i < n; i++)
            {
                float w = x[i] * x[i];
                float slx = sumlx - w * x[i] * L[i];
                if (slx > 0)
                {
                    float sl2 = suml2 - w * L[i] * L[i];
                    int newL = Math.Max(-nmax, Math.Min(nmax - 1, NearestInt(x[i] * sl2 / slx)));
                    if (newL != L[i])
                    {
                        slx += w * x[i] * newL;
                        sl2 += w * newL * newL;
                        if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2)
                        {
                            L[i] = (sbyte)newL;
                            sumlx = slx;
                            suml2 = sl2;
                            changed++;
                        }
                    }
                }
            }
            if (changed == 0) break;
        }
        for (int i = 0; i < n; i++) L[i] += (sbyte)nmax;
        return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
    }

    /// <summary>
    /// ggml's make_qkx2_quants: asymmetric quants L in 0..nmax with x ≈ scale*L - theMin (min clamped to
    /// &lt;= 0 before negation), searching nstep+1 candidate scales by weighted least squares.
    /// </summary>
    private static float MakeQkx2Quants(ReadOnlySpan<float> x, ReadOnlySpan<float> weights, int nmax, Span<byte> L,
        out float theMin, Span<byte> Laux, float rmin, float rdelta, int nstep, bool useMad)
    {
        int n = x.Length;
        float min = x[0], max = x[0];
        float sumW = weights[0];
        float sumX = sumW * x[0];
        for (int i = 1; i < n; i++)
        {
            if (x[i] < min) min = x[i];
            if (x[i] > max) max = x[i];
            float w = weights[i];
            sumW += w;
            sumX += w * x[i];
        }
        if (min > 0) min = 0;
        if (max == min)
        {
            L[..n].Clear();
            theMin = -min;
            return 0f;
        }
        float iscale = nmax / (max - min);
        float scale = 1 / iscale;
        float bestError = 0;
        for (int i = 0; i < n; i++)
        {
            int l = NearestInt(iscale * (x[i] - min));
            L[i] = (byte)Math.Max(0, Math.Min(nmax, l));
            float diff = scale * L[i] + min - x[i];
            diff = useMad ? MathF.Abs(diff) : diff * diff;
            bestError += weights[i] * diff;
        }
        if (nstep < 1)
        {
            theMin = -min;
            return scale;
        }
        for (int step = 0; step <= nstep; step++)
        {
            iscale = (rmin + rdelta * step + nmax) / (max - min);
            float sumL = 0, sumL2 = 0, sumXL = 0;
            for (int i = 0; i < n; i++)
            {
                int l = Math.Max(0, Math.Min(nmax, NearestInt(iscale * (x[i] - min))));
                Laux[i] = (byte)l;
                float w = weights[i];
                sumL += w * l;
                sumL2 += w * l * l;
                sumXL += w * l * x[i];
            }
            float D = sumW * sumL2 - sumL * sumL;
            if (D > 0)
            {
                float thisScale = (sumW * sumXL - sumX * sumL) / D;
                float thisMin = (sumL2 * sumX - sumL * sumXL) / D;
                if (thisMin > 0)
                {
                    thisMin = 0;
                    thisScale = sumXL / sumL2;
                }
                float curError = 0;
                for (int i = 0; i < n; i++)
                {
                    float diff = thisScale * Laux[i] + thisMin - x[i];
                    diff = useMad ? MathF.Abs(diff) : diff * diff;
                    curError += weights[i] * diff;
                }
                if (curError < bestError)
                {
                    Laux[..n].CopyTo(L);
                    bestError = curError;
                    scale = thisScale;
                    min = thisMin;
                }
            }
        }
        theMin = -min;
        return scale;
    }

    /// <summary>Packs 256 2-bit values: qs[32h + l] holds elements 128h + l + 32k at bits 2k (k = 0..3).</summary>
    private static void Pack2Bit(ReadOnlySpan<byte> L, Span<byte> qs)
    {
        for (int j = 0; j < 256; j += 128)
            for (int l = 0; l < 32; l++)
                qs[j / 4 + l] = (byte)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
    }

    // ---------------------------------------------------------------- k-quants

    /// <summary>quantize_row_q2_K_ref: per 16 elements a 2-bit scale/min fit (MAD), then 4-bit scales and mins.</summary>
    private static void Q2_K(ReadOnlySpan<float> x, Span<byte> y)
    {
        Span<byte> L = stackalloc byte[256];
        Span<byte> Laux = stackalloc byte[16];
        Span<float> weights = stackalloc float[16];
        Span<float> mins = stackalloc float[16];
        Span<float> scales = stackalloc float[16];
        const float q4scale = 15f;
        var ysc = y[..16];
        var qs = y.Slice(16, 64);

        float maxScale = 0, maxMin = 0;
        for (int j = 0; j < 16; j++)
        {
            var xs = x.Slice(16 * j, 16);
            for (int l = 0; l < 16; l++) weights[l] = MathF.Abs(xs[l]);
            scales[j] = MakeQkx2Quants(xs, weights, 3, L.Slice(16 * j, 16), out mins[j], Laux, -0.5f, 0.1f, 15, true);
            if (scales[j] > maxScale) maxScale = scales[j];
            if (mins[j] > maxMin) maxMin = mins[j];
        }

        if (maxScale > 0)
        {
            float iscale = q4scale / maxScale;
            for (int j = 0; j < 16; j++) ysc[j] = (byte)NearestInt(iscale * scales[j]);
            WriteHalf(y, 80, maxScale / q4scale);
        }
        else
        {
            ysc.Clear();
            WriteHalf(y, 80, 0f);
        }
        if (maxMin > 0)
        {
            float iscale = q4scale / maxMin;
            for (int j = 0; j < 16; j++) ysc[j] |= (byte)(NearestInt(iscale * mins[j]) << 4);
            WriteHalf(y, 82, maxMin / q4scale);
        }
        else
        {
            WriteHalf(y, 82, 0f);
        }

        float dAll = Dequantize.Half(y, 80), dminAll = Dequantize.Half(y, 82);
        for (int j = 0; j < 16; j++)
        {
            float d = dAll * (ysc[j] & 0xF);
            if (d == 0) continue;
            float dm = dminAll * (ysc[j] >> 4);
            for (int ii = 0; ii < 16; ii++)
            {
                int l = NearestInt((x[16 * j + ii] + dm) / d);
                L[16 * j + ii] = (byte)Math.Max(0, Math.Min(3, l));
            }
        }
        Pack2Bit(L, qs);
    }

    /// <summary>quantize_row_q3_K_ref: per 16 elements a symmetric 3-bit fit, then 6-bit scales, hmask for bit 2.</summary>
    private static void Q3_K(ReadOnlySpan<float> x, Span<byte> y)
    {
        Span<sbyte> L = stackalloc sbyte[256];
        Span<float> scales = stackalloc float[16];
        var hmask = y[..32];
        var qs = y.Slice(32, 64);
        var ysc = y.Slice(96, 12);

        float maxScale = 0, amax = 0;
        for (int j = 0; j < 16; j++)
        {
            scales[j] = MakeQ3Quants(x.Slice(16 * j, 16), 4, L.Slice(16 * j, 16));
            float scale = MathF.Abs(scales[j]);
            if (scale > amax) { amax = scale; maxScale = scales[j]; }
        }

        ysc.Clear();
        if (maxScale != 0)
        {
            float iscale = -32f / maxScale;
            for (int j = 0; j < 16; j++)
            {
                int l = (sbyte)NearestInt(iscale * scales[j]);
                l = Math.Max(-32, Math.Min(31, l)) + 32;
                if (j < 8) ysc[j] = (byte)(l & 0xF);
                else ysc[j - 8] |= (byte)((l & 0xF) << 4);
                l >>= 4;
                ysc[j % 4 + 8] |= (byte)(l << (2 * (j / 4)));
            }
            WriteHalf(y, 108, 1 / iscale);
        }
        else
        {
            WriteHalf(y, 108, 0f);
        }

        float dAll = Dequantize.Half(y, 108);
        for (int j = 0; j < 16; j++)
        {
            int sc = Dequantize.Q3_KScale(ysc, j) - 32;
            float d = dAll * sc;
            if (d == 0) continue;
            for (int ii = 0; ii < 16; ii++)
            {
                int l = NearestInt(x[16 * j + ii] / d);
                L[16 * j + ii] = (sbyte)(Math.Max(-4, Math.Min(3, l)) + 4);
            }
        }

        // Bit 2 of element j goes to bit j/32 of hmask[j%32]; the low 2 bits are packed like q2_K.
        hmask.Clear();
        for (int j = 0; j < 256; j++)
        {
            if (L[j] > 3)
            {
                hmask[j % 32] |= (byte)(1 << (j / 32));
                L[j] -= 4;
            }
        }
        Pack2Bit(MemoryMarshal.Cast<sbyte, byte>(L), qs);
    }

    /// <summary>
    /// Packs eight 6-bit (scale, min) pairs as get_scale_min_k4 reads them: j &lt; 4 in the low 6 bits of
    /// scales[j] / scales[j+4]; j &gt;= 4 as nibbles of scales[j+4] plus 2 high bits in the top of
    /// scales[j-4] (scale) and scales[j] (min).
    /// </summary>
    private static void PackScaleMinK4(ReadOnlySpan<int> ls, ReadOnlySpan<int> lm, Span<byte> scales)
    {
        for (int j = 0; j < 8; j++)
        {
            if (j < 4)
            {
                scales[j] = (byte)ls[j];
                scales[j + 4] = (byte)lm[j];
            }
            else
            {
                scales[j + 4] = (byte)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
                scales[j - 4] |= (byte)((ls[j] >> 4) << 6);
                scales[j] |= (byte)((lm[j] >> 4) << 6);
            }
        }
    }

    /// <summary>
    /// The shared part of quantize_row_q4_K_ref / q5_K_ref: per 32 elements an asymmetric fit with
    /// weights av_x + |x|, then 6-bit scales and mins, then the final quants L (0..nmax) from the stored values.
    /// </summary>
    private static void KQuantScaleMin(ReadOnlySpan<float> x, Span<byte> y, int nmax, float rmin, float rdelta, int nstep, Span<byte> L)
    {
        Span<byte> Laux = stackalloc byte[32];
        Span<float> weights = stackalloc float[32];
        Span<float> mins = stackalloc float[8];
        Span<float> scales = stackalloc float[8];
        Span<int> ls = stackalloc int[8];
        Span<int> lm = stackalloc int[8];

        float maxScale = 0, maxMin = 0;
        for (int j = 0; j < 8; j++)
        {
            var xs = x.Slice(32 * j, 32);
            float sumX2 = 0;
            for (int l = 0; l < 32; l++) sumX2 += xs[l] * xs[l];
            float avX = MathF.Sqrt(sumX2 / 32);
            for (int l = 0; l < 32; l++) weights[l] = avX + MathF.Abs(xs[l]);
            scales[j] = MakeQkx2Quants(xs, weights, nmax, L.Slice(32 * j, 32), out mins[j], Laux, rmin, rdelta, nstep, false);
            if (scales[j] > maxScale) maxScale = scales[j];
            if (mins[j] > maxMin) maxMin = mins[j];
        }

        float invScale = maxScale > 0 ? 63f / maxScale : 0f;
        float invMin = maxMin > 0 ? 63f / maxMin : 0f;
        for (int j = 0; j < 8; j++)
        {
            ls[j] = Math.Min((byte)63, (byte)NearestInt(invScale * scales[j]));
            lm[j] = Math.Min((byte)63, (byte)NearestInt(invMin * mins[j]));
        }
        var ysc = y.Slice(4, 12);
        PackScaleMinK4(ls, lm, ysc);
        WriteHalf(y, 0, maxScale / 63f);
        WriteHalf(y, 2, maxMin / 63f);

        float dAll = Dequantize.Half(y, 0), dminAll = Dequantize.Half(y, 2);
        for (int j = 0; j < 8; j++)
        {
            Dequantize.ScaleMinK4(ysc, j, out int sc, out int m);
            float d = dAll * sc;
            if (d == 0) continue;
            float dm = dminAll * m;
            for (int ii = 0; ii < 32; ii++)
            {
                int l = NearestInt((x[32 * j + ii] + dm) / d);
                L[32 * j + ii] = (byte)Math.Max(0, Math.Min(nmax, l));
            }
        }
    }

    /// <summary>quantize_row_q4_K_ref.</summary>
    private static void Q4_K(ReadOnlySpan<float> x, Span<byte> y)
    {
        Span<byte> L = stackalloc byte[256];
        KQuantScaleMin(x, y, 15, -1f, 0.1f, 20, L);
        var qs = y.Slice(16, 128);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++)
                qs[32 * c + l] = (byte)(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
    }

    /// <summary>quantize_row_q5_K_ref.</summary>
    private static void Q5_K(ReadOnlySpan<float> x, Span<byte> y)
    {
        Span<byte> L = stackalloc byte[256];
        KQuantScaleMin(x, y, 31, -0.5f, 0.1f, 15, L);
        var qh = y.Slice(16, 32);
        var qs = y.Slice(48, 128);
        qh.Clear();
        for (int c = 0; c < 4; c++)
        {
            for (int l = 0; l < 32; l++)
            {
                int l1 = L[64 * c + l], l2 = L[64 * c + 32 + l];
                if (l1 > 15) { l1 -= 16; qh[l] |= (byte)(1 << (2 * c)); }
                if (l2 > 15) { l2 -= 16; qh[l] |= (byte)(2 << (2 * c)); }
                qs[32 * c + l] = (byte)(l1 | (l2 << 4));
            }
        }
    }

    /// <summary>quantize_row_q6_K_ref: per 16 elements a symmetric 6-bit fit, then 8-bit signed scales.</summary>
    private static void Q6_K(ReadOnlySpan<float> x, Span<byte> y) => Q6_KCore(x, y, default);

    /// <summary>Q6_K with optional importance weights for make_qx_quants (empty: x^2, the reference).</summary>
    private static void Q6_KCore(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw)
    {
        Span<sbyte> L = stackalloc sbyte[256];
        Span<float> scales = stackalloc float[16];
        var ql = y[..128];
        var qh = y.Slice(128, 64);
        var ysc = MemoryMarshal.Cast<byte, sbyte>(y.Slice(192, 16));

        float maxScale = 0, maxAbsScale = 0;
        for (int ib = 0; ib < 16; ib++)
        {
            scales[ib] = MakeQxQuants(x.Slice(16 * ib, 16), 32, L.Slice(16 * ib, 16), qw.IsEmpty ? default : qw.Slice(16 * ib, 16));
            float abs = MathF.Abs(scales[ib]);
            if (abs > maxAbsScale) { maxAbsScale = abs; maxScale = scales[ib]; }
        }
        if (maxAbsScale < GroupMaxEps)
        {
            y[..210].Clear();
            return;
        }

        float iscale = -128f / maxScale;
        WriteHalf(y, 208, 1 / iscale);
        for (int ib = 0; ib < 16; ib++) ysc[ib] = (sbyte)Math.Min(127, NearestInt(iscale * scales[ib]));

        float dAll = Dequantize.Half(y, 208);
        for (int j = 0; j < 16; j++)
        {
            float d = dAll * ysc[j];
            if (d == 0) continue;
            for (int ii = 0; ii < 16; ii++)
            {
                int l = NearestInt(x[16 * j + ii] / d);
                L[16 * j + ii] = (sbyte)(Math.Max(-32, Math.Min(31, l)) + 32);
            }
        }

        for (int h = 0; h < 2; h++)
        {
            var Lh = L.Slice(128 * h, 128);
            for (int l = 0; l < 32; l++)
            {
                int q1 = Lh[l], q2 = Lh[l + 32], q3 = Lh[l + 64], q4 = Lh[l + 96];
                ql[64 * h + l] = (byte)((q1 & 0xF) | ((q3 & 0xF) << 4));
                ql[64 * h + l + 32] = (byte)((q2 & 0xF) | ((q4 & 0xF) << 4));
                qh[32 * h + l] = (byte)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
            }
        }
    }

    /// <summary>quantize_row_q8_K_ref: the largest-magnitude value maps to -127; d = 1/iscale as float32; bsums.</summary>
    private static void Q8_K(ReadOnlySpan<float> x, Span<byte> y)
    {
        var qs = MemoryMarshal.Cast<byte, sbyte>(y.Slice(4, 256));
        var bsums = y.Slice(260, 32);
        float max = SignedAbsMax(x);
        if (max == 0)
        {
            y[..292].Clear();
            return;
        }
        float iscale = -127f / max;
        for (int j = 0; j < 256; j++) qs[j] = (sbyte)Math.Min(127, NearestInt(iscale * x[j]));
        for (int j = 0; j < 16; j++)
        {
            int sum = 0;
            for (int ii = 0; ii < 16; ii++) sum += qs[16 * j + ii];
            BinaryPrimitives.WriteInt16LittleEndian(bsums.Slice(2 * j, 2), (short)sum);
        }
        BinaryPrimitives.WriteSingleLittleEndian(y[..4], 1 / iscale);
    }
}
