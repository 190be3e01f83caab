using System.Buffers.Binary;

namespace FitLM.Tensors;

/// <summary>
/// Quantization guided by an importance matrix (llama.cpp's imatrix: the mean squared activation each
/// column of a weight sees). Each quantizer follows ggml's imatrix path (quantize_row_*_impl in
/// ggml-quants.c) step by step in float32: the importance times sqrt(sigma^2 + x^2) weighs each element's
/// error, and the block scales are themselves fitted by weighted least squares (make_qp_quants / make_qx_quants).
/// Q8_0 and the float types ignore the matrix, as ggml does.
/// </summary>
public static partial class Quantize
{
    /// <summary>
    /// Quantizes whole rows of <paramref name="rowLength"/> floats. With an empty <paramref name="importance"/>
    /// this is <see cref="Row"/>; otherwise <paramref name="importance"/> holds one weight per column
    /// (rowLength values) and every row is quantized as ggml's quantize_&lt;type&gt; does with quant_weights.
    /// </summary>
    public static void Rows(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst, int rowLength, ReadOnlySpan<float> importance)
    {
        if (importance.IsEmpty || !UsesImportance(type))
        {
            Row(type, src, dst);
            return;
        }
        if (importance.Length != rowLength)
            throw new FitLMException($"Quantize.Rows: the importance vector has {importance.Length} values for rows of {rowLength}");
        if (rowLength <= 0 || src.Length % rowLength != 0)
            throw new FitLMException($"Quantize.Rows: {src.Length} values are not whole rows of {rowLength}");
        long rowBytes = GgmlTypes.RowBytes(type, rowLength);
        int rows = src.Length / rowLength;
        Dequantize.CheckRow(type, dst.Length, src.Length, "Quantize.Rows");
        for (int r = 0; r < rows; r++)
            WeightedRow(type, src.Slice(r * rowLength, rowLength), dst.Slice((int)(r * rowBytes), (int)rowBytes), importance);
    }

    /// <summary>Whether ggml's quantizer for <paramref name="type"/> takes an importance matrix into account.</summary>
    public static bool UsesImportance(GgmlType type) => type is GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1
        or GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K;

    private static void WeightedRow(GgmlType type, ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw)
    {
        switch (type)
        {
            case GgmlType.Q4_0: SymmetricWeighted(x, y, qw, nmax: 8, blockBytes: 18); return;
            case GgmlType.Q5_0: SymmetricWeighted(x, y, qw, nmax: 16, blockBytes: 22); return;
            case GgmlType.Q4_1: AsymmetricWeighted(x, y, qw, nmax: 15, blockBytes: 20); return;
            case GgmlType.Q5_1: AsymmetricWeighted(x, y, qw, nmax: 31, blockBytes: 24); return;
        }
        int bb = GgmlTypes.BlockBytes(type);
        for (int i = 0; i < x.Length / 256; i++)
        {
            var xb = x.Slice(256 * i, 256);
            var yb = y.Slice(bb * i, bb);
            var wb = qw.Slice(256 * i, 256);
            switch (type)
            {
                case GgmlType.Q2_K: Q2_KWeighted(xb, yb, wb); break;
                case GgmlType.Q3_K: Q3_KWeighted(xb, yb, wb); break;
                case GgmlType.Q4_K: Q4_KWeighted(xb, yb, wb); break;
                case GgmlType.Q5_K: Q5_KWeighted(xb, yb, wb); break;
                case GgmlType.Q6_K: Q6_KWeighted(xb, yb, wb); break;
            }
        }
    }

    /// <summary>sigma^2 of a row (or super-block): mean of x^2, times <paramref name="factor"/>.</summary>
    private static float Sigma2(ReadOnlySpan<float> x, float factor)
    {
        float sum = 0;
        for (int j = 0; j < x.Length; j++) sum += x[j] * x[j];
        return factor * sum / x.Length;
    }

    // ---------------------------------------------------------------- 32-element blocks

    /// <summary>quantize_row_q4_0_impl / q5_0_impl: make_qx_quants per block with the row's sigma^2.</summary>
    private static void SymmetricWeighted(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw, int nmax, int blockBytes)
    {
        Span<float> weight = stackalloc float[32];
        Span<sbyte> L = stackalloc sbyte[32];
        Span<int> q = stackalloc int[32];
        float sigma2 = Sigma2(x, 1f);
        for (int ib = 0; ib < x.Length / 32; ib++)
        {
            var xb = x.Slice(32 * ib, 32);
            var wb = qw.Slice(32 * ib, 32);
            var yb = y.Slice(blockBytes * ib, blockBytes);
            for (int j = 0; j < 32; j++) weight[j] = wb[j] * MathF.Sqrt(sigma2 + xb[j] * xb[j]);
            float d = MakeQxQuants(xb, nmax, L, weight);
            WriteHalf(yb, 0, d);
            if (nmax == 8)
            {
                for (int j = 0; j < 16; j++) yb[2 + j] = (byte)((byte)L[j] | ((byte)L[j + 16] << 4)); // L holds 0..15 here
            }
            else
            {
                for (int j = 0; j < 32; j++) q[j] = L[j];
                PackQh(yb.Slice(2, 4), q);
                for (int j = 0; j < 16; j++) yb[6 + j] = (byte)((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4));
            }
        }
    }

    /// <summary>quantize_row_q4_1_impl / q5_1_impl: make_qkx3_quants per block, m = -min.</summary>
    private static void AsymmetricWeighted(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw, int nmax, int blockBytes)
    {
        Span<float> weight = stackalloc float[32];
        Span<byte> L = stackalloc byte[32];
        Span<byte> Laux = stackalloc byte[32];
        Span<int> q = stackalloc int[32];
        float sigma2 = Sigma2(x, 1f);
        for (int ib = 0; ib < x.Length / 32; ib++)
        {
            var xb = x.Slice(32 * ib, 32);
            var wb = qw.Slice(32 * ib, 32);
            var yb = y.Slice(blockBytes * ib, blockBytes);
            for (int j = 0; j < 32; j++) weight[j] = wb[j] * MathF.Sqrt(sigma2 + xb[j] * xb[j]);
            float d = MakeQkx3Quants(xb, weight, nmax, L, out float min, Laux, -0.9f, 0.05f, 36, false);
            WriteHalf(yb, 0, d);
            WriteHalf(yb, 2, -min);
            if (nmax == 15)
            {
                for (int j = 0; j < 16; j++) yb[4 + j] = (byte)(L[j] | (L[j + 16] << 4));
            }
            else
            {
                for (int j = 0; j < 32; j++) q[j] = L[j];
                PackQh(yb.Slice(4, 4), q);
                for (int j = 0; j < 16; j++) yb[8 + j] = (byte)((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4));
            }
        }
    }

    // ---------------------------------------------------------------- k-quant helpers

    /// <summary>
    /// ggml's make_qkx3_quants: as make_qkx2_quants (x ≈ scale*L - theMin, L in 0..nmax) with weights
    /// (x^2 when empty) and a finer search of nstep+1 candidate scales.
    /// </summary>
    private static float MakeQkx3Quants(ReadOnlySpan<float> x, ReadOnlySpan<float> weights, int nmax, Span<byte> L,
        out float theMin, Span<byte> Laux, float rmin, float rdelta, int nstep, bool useMad)
    {
        int n = x.Length;
        float min = x[0], max = x[0];
        float sumW = (weights.IsEmpty ? x[0] * x[0] : weights[0]);
        float sumX = sumW * x[0];
        for (int i = 1; i < n; i++)
        {
            if (x[i] < min) min = x[i];
            if (x[i] > max) max = x[i];
            float w = (weights.IsEmpty ? x[i] * x[i] : weights[i]);
            sumW += w;
            sumX += w * x[i];
        }
        if (min > 0) min = 0;
        if (max <= min)
        {
            L[..n].Clear();
            theMin = -min;
            return 0f;
        }
        float iscale = nmax / (max - min);
        float scale = 1 / iscale;
        float bestMad = 0;
        for (int i = 0; i < n; i++)
        {
            int l = NearestInt(iscale * (x[i] - min));
            L[i] = (byte)Math.Max(0, Math.Min(nmax, l));
            float diff = scale * L[i] + min - x[i];
            diff = useMad ? MathF.Abs(diff) : diff * diff;
            bestMad += (weights.IsEmpty ? x[i] * x[i] : weights[i]) * diff;
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
                // min is the best fit so far and can sit at or near max: v may be huge, so clamp before rounding.
                float v = iscale * (x[i] - min);
                int l = v > 0 ? NearestInt(Math.Min(v, nmax)) : 0;
                Laux[i] = (byte)l;
                float w = (weights.IsEmpty ? x[i] * x[i] : weights[i]);
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
                float mad = 0;
                for (int i = 0; i < n; i++)
                {
                    float diff = thisScale * Laux[i] + thisMin - x[i];
                    diff = useMad ? MathF.Abs(diff) : diff * diff;
                    mad += (weights.IsEmpty ? x[i] * x[i] : weights[i]) * diff;
                }
                if (mad < bestMad)
                {
                    Laux[..n].CopyTo(L);
                    bestMad = mad;
                    scale = thisScale;
                    min = thisMin;
                }
            }
        }
        theMin = -min;
        return scale;
    }

    /// <summary>
    /// ggml's make_qp_quants: non-negative values x ≈ scale*L with L in 0..nmax, weighted by
    /// <paramref name="qw"/>; 9 candidate scales, then up to 5 coordinate-descent passes. Returns the scale.
    /// </summary>
    private static float MakeQpQuants(ReadOnlySpan<float> x, int nmax, Span<byte> L, ReadOnlySpan<float> qw)
    {
        int n = x.Length;
        float max = 0;
        for (int i = 0; i < n; i++) max = Math.Max(max, x[i]);
        if (max < GroupMaxEps)
        {
            L[..n].Clear();
            return 0f;
        }
        float iscale = nmax / max;
        for (int i = 0; i < n; i++) L[i] = (byte)NearestInt(iscale * x[i]);
        float scale = 1 / iscale;
        float bestMse = 0;
        for (int i = 0; i < n; i++)
        {
            float diff = x[i] - scale * L[i];
            bestMse += qw[i] * diff * diff;
        }
        for (int step = -4; step <= 4; step++)
        {
            if (step == 0) continue;
            float iscaleIs = (0.1f * step + nmax) / max;
            float scaleIs = 1 / iscaleIs;
            float mse = 0;
            for (int i = 0; i < n; i++)
            {
                int l = Math.Min(nmax, NearestInt(iscaleIs * x[i]));
                float diff = x[i] - scaleIs * l;
                mse += qw[i] * diff * diff;
            }
            if (mse < bestMse)
            {
                bestMse = mse;
                iscale = iscaleIs;
            }
        }
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; i++)
        {
            int l = Math.Min(nmax, NearestInt(iscale * x[i]));
            L[i] = (byte)l;
            float w = qw[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        for (int itry = 0; itry < 5; itry++)
        {
            int changed = 0;
            for (int i = 0; i < n; i++)
            {
                float w = qw[i];
                float slx = sumlx - w * x[i] * L[i];
                float sl2 = suml2 - w * L[i] * L[i];
                if (slx > 0 && sl2 > 0)
                {
                    int newL = Math.Min(nmax, NearestInt(x[i] * sl2 / slx));
                    if (newL != L[i])
                    {
                        slx += w * x[i] * newL;
                        sl2 += w * newL * newL;
                        if (slx * slx * suml2 > sumlx * sumlx * sl2)
                        {
                            L[i] = (byte)newL;
                            sumlx = slx;
                            suml2 = sl2;
                            changed++;
                        }
                    }
                }
            }
            if (changed == 0) break;
        }
        return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
    }

    // ---------------------------------------------------------------- k-quants

    /// <summary>quantize_row_q2_K_impl: make_qkx3_quants per 16, then 4-bit scales and mins by make_qp_quants.</summary>
    private static void Q2_KWeighted(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw)
    {
        Span<byte> L = stackalloc byte[256];
        Span<byte> Laux = stackalloc byte[16];
        Span<float> weight = stackalloc float[16];
        Span<float> mins = stackalloc float[16];
        Span<float> scales = stackalloc float[16];
        Span<float> sw = stackalloc float[16];
        Span<byte> Ls = stackalloc byte[16];
        Span<byte> Lm = stackalloc byte[16];
        var ysc = y[..16];

        float sigma2 = Sigma2(x, 1f);
        for (int j = 0; j < 16; j++)
        {
            for (int l = 0; l < 16; l++) weight[l] = qw[16 * j + l] * MathF.Sqrt(sigma2 + x[16 * j + l] * x[16 * j + l]);
            sw[j] = 0;
            for (int l = 0; l < 16; l++) sw[j] += weight[l];
            scales[j] = MakeQkx3Quants(x.Slice(16 * j, 16), weight, 3, L.Slice(16 * j, 16), out mins[j], Laux, -0.9f, 0.05f, 36, false);
        }
        float dm = MakeQpQuants(scales, 15, Ls, sw);
        float mm = MakeQpQuants(mins, 15, Lm, sw);
        WriteHalf(y, 80, dm);
        WriteHalf(y, 82, mm);
        dm = Dequantize.Half(y, 80);
        mm = Dequantize.Half(y, 82);
        for (int j = 0; j < 16; j++) ysc[j] = (byte)(Ls[j] | (Lm[j] << 4));
        for (int j = 0; j < 16; j++)
        {
            float d = dm * (ysc[j] & 0xF);
            if (d == 0) continue;
            float m = mm * (ysc[j] >> 4);
            for (int ii = 0; ii < 16; ii++)
            {
                int l = NearestInt((x[16 * j + ii] + m) / d);
                L[16 * j + ii] = (byte)Math.Max(0, Math.Min(3, l));
            }
        }
        Pack2Bit(L, y.Slice(16, 64));
    }

    /// <summary>quantize_row_q3_K_impl: weighted make_qx_quants per 16, the 6-bit scales by make_qx_quants on their sums of weights.</summary>
    private static void Q3_KWeighted(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw)
    {
        Span<sbyte> L = stackalloc sbyte[256];
        Span<float> scales = stackalloc float[16];
        Span<float> weight = stackalloc float[16];
        Span<float> sw = stackalloc float[16];
        Span<sbyte> Ls = stackalloc sbyte[16];
        var hmask = y[..32];
        var ysc = y.Slice(96, 12);

        float sigma2 = Sigma2(x, 2f);
        for (int j = 0; j < 16; j++)
        {
            for (int l = 0; l < 16; l++) weight[l] = qw[16 * j + l] * MathF.Sqrt(sigma2 + x[16 * j + l] * x[16 * j + l]);
            float sumw = 0;
            for (int l = 0; l < 16; l++) sumw += weight[l];
            sw[j] = sumw;
            scales[j] = MakeQxQuants(x.Slice(16 * j, 16), 4, L.Slice(16 * j, 16), weight);
        }
        ysc.Clear();
        float dBlock = MakeQxQuants(scales, 32, Ls, sw);
        for (int j = 0; j < 16; j++)
        {
            int l = Ls[j];
            if (j < 8) ysc[j] = (byte)(l & 0xF);
            else ysc[j - 8] |= (byte)((l & 0xF) << 4);
            l >>= 4;
            ysc[j % 4 + 8] |= (byte)(l << (2 * (j / 4)));
        }
        WriteHalf(y, 108, dBlock);

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
        hmask.Clear();
        for (int j = 0; j < 256; j++)
        {
            if (L[j] > 3)
            {
                hmask[j % 32] |= (byte)(1 << (j / 32));
                L[j] -= 4;
            }
        }
        Pack2Bit(System.Runtime.InteropServices.MemoryMarshal.Cast<sbyte, byte>(L), y.Slice(32, 64));
    }

    /// <summary>
    /// The shared part of quantize_row_q4_K_impl / q5_K_impl: make_qkx3_quants per 32 with weights
    /// importance * sqrt(sigma^2 + x^2), 6-bit scales and mins by make_qp_quants, then the final quants.
    /// </summary>
    private static void KQuantScaleMinWeighted(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw, int nmax, Span<byte> L)
    {
        Span<byte> Laux = stackalloc byte[32];
        Span<float> weights = stackalloc float[32];
        Span<float> mins = stackalloc float[8];
        Span<float> scales = stackalloc float[8];
        Span<float> sw = stackalloc float[8];
        Span<byte> Ls = stackalloc byte[8];
        Span<byte> Lm = stackalloc byte[8];
        Span<int> ls = stackalloc int[8];
        Span<int> lm = stackalloc int[8];

        float sigma2 = Sigma2(x, 2f);
        for (int j = 0; j < 8; j++)
        {
            for (int l = 0; l < 32; l++) weights[l] = qw[32 * j + l] * MathF.Sqrt(sigma2 + x[32 * j + l] * x[32 * j + l]);
            float sumw = 0;
            for (int l = 0; l < 32; l++) sumw += weights[l];
            sw[j] = sumw;
            scales[j] = MakeQkx3Quants(x.Slice(32 * j, 32), weights, nmax, L.Slice(32 * j, 32), out mins[j], Laux, -0.9f, 0.05f, 36, false);
        }
        float dBlock = MakeQpQuants(scales, 63, Ls, sw);
        float mBlock = MakeQpQuants(mins, 63, Lm, sw);
        for (int j = 0; j < 8; j++)
        {
            ls[j] = Math.Min((byte)63, Ls[j]);
            lm[j] = Math.Min((byte)63, Lm[j]);
        }
        var ysc = y.Slice(4, 12);
        PackScaleMinK4(ls, lm, ysc);
        WriteHalf(y, 0, dBlock);
        WriteHalf(y, 2, mBlock);

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

    /// <summary>quantize_row_q4_K_impl.</summary>
    private static void Q4_KWeighted(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw)
    {
        Span<byte> L = stackalloc byte[256];
        KQuantScaleMinWeighted(x, y, qw, 15, L);
        var qs = y.Slice(16, 128);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++)
                qs[32 * c + l] = (byte)(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
    }

    /// <summary>quantize_row_q5_K_impl.</summary>
    private static void Q5_KWeighted(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw)
    {
        Span<byte> L = stackalloc byte[256];
        KQuantScaleMinWeighted(x, y, qw, 31, L);
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

    /// <summary>quantize_row_q6_K_impl: as the reference, with the importance itself weighing make_qx_quants.</summary>
    private static void Q6_KWeighted(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw) => Q6_KCore(x, y, qw);
}
