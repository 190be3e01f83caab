using FitLM.KvCache;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.KvCache;

/// <summary>
/// Every KV type reproduces float32 attention on random data within a bound derived from its quantization error.
/// <para>
/// Derivation. Let each cached key element carry an error of at most εK[j,d] and each value element εV[j,d].
/// Scores move by |Δs_j| ≤ scale·Σ_d |q_d|·εK[j,d] ≤ δ. Softmax weights then move by a factor in [e^-2δ, e^2δ],
/// so Σ_j |p̂_j − p_j| ≤ e^2δ − 1, and since Σ_j (p̂_j − p_j) = 0 the output moves by at most
/// (e^2δ − 1)·(max_j v_jd − min_j v_jd)/2 + max_j εV[j,d] (+ float32 rounding ρ).
/// </para>
/// <para>
/// εK and εV come from each scheme's own error: an asymmetric min-max group of range ρg over 2^b − 1 levels errs by at most
/// half a step (scale and min rounded to float16 outward: ≤ ½(ρg + 2⁻¹⁰|min|)/(2^b − 1)·(1 + 2⁻⁹)); float16 storage by
/// 2⁻¹¹|x|; a latent error e maps to [k; v] through Ũ (the float16 basis) as |Ũ e| ≤ Σ|Ũ_di| e_i plus the basis'
/// own round-trip error |(ŨŨᵀ − I)[k; v]|; an X error maps through W as Σ_c |W_dc| e_c; XQuant-CL's residual error
/// e passes the RMS norm as ‖n(x̂) − n(x)‖ ≤ 2‖e‖/rms(x̂) and then W·diag(g) by Cauchy–Schwarz; RoPE rotates each
/// pair (a, b), so a rotated element errs by at most ε_a + ε_b.
/// </para>
/// </summary>
public class KvStoreAccuracyTests(ITestOutputHelper output)
{
    private const int Context = 200, Batch = 64, G = KvCacheOptions.Group;

    public static TheoryData<string> Specs => new()
    {
        "f16", "kivi4", "kivi2", "kivi4:r32", "xquant4", "xquant3", "xquant2", "xquant-cl",
        "xquant4:x", "xquant4:proj", "xquant4:pt", "xquant-cl:b2",
    };

    [Theory]
    [MemberData(nameof(Specs))]
    public void AttentionMatchesFloat32WithinTheDerivedBound(string spec)
    {
        var model = new TestKvModel(seed: 7);
        var c = model.Config;
        var o = KvCacheOptions.Parse(spec);
        using var factory = new KvStoreFactory(model, o, Context, Batch);
        using var store = factory.Create();
        var rng = new Random(3);
        int n = 180, kvDim = c.KvDim;
        var tokens = Enumerable.Range(0, n).Select(_ => rng.Next(c.Vocab)).ToArray();
        var rows = model.MakeRows(tokens, seed: 11);
        // Keys and values exactly as float32 attention uses them.
        var kf = new float[c.Layers][];
        var vf = new float[c.Layers][];
        for (int l = 0; l < c.Layers; l++)
        {
            kf[l] = (float[])rows[l].K.Clone();
            vf[l] = (float[])rows[l].V.Clone();
            for (int t = 0; t < n; t++)
            {
                model.FinishKey(l, kf[l].AsSpan(t * kvDim, kvDim), t);
                model.FinishValue(l, vf[l].AsSpan(t * kvDim, kvDim));
            }
        }
        var (ek, ev) = Bounds(o, model, factory, rows, kf, vf, tokens);

        double worstRatio = 0, worstError = 0;
        // A prefill batch, a second batch, decoding one token at a time, a final batch.
        var schedule = new List<(int Pos, int Count)> { (0, 64), (64, 36) };
        for (int p = 100; p < 140; p++) schedule.Add((p, 1));
        schedule.Add((140, 40));
        foreach (var (pos, count) in schedule)
            for (int l = 0; l < c.Layers; l++)
            {
                var r = rows[l];
                store.Append(l, pos, new KvRows(tokens.AsSpan(pos, count), r.Residual.AsSpan(pos * c.Dim, count * c.Dim),
                    r.X.AsSpan(pos * c.Dim, count * c.Dim), r.K.AsSpan(pos * kvDim, count * kvDim), r.V.AsSpan(pos * kvDim, count * kvDim)));
                var q = new float[count * c.QDim];
                for (int i = 0; i < q.Length; i++) q[i] = (float)(rng.NextDouble() * 2 - 1) * 0.6f;
                var got = new float[count * c.QDim];
                store.Attend(l, pos, count, q, got);
                for (int t = 0; t < count; t++)
                    for (int h = 0; h < c.Heads; h++)
                    {
                        var (err, bound) = Check(c, q.AsSpan(t * c.QDim + h * c.HeadDim, c.HeadDim), pos + t, h,
                            kf[l], vf[l], ek[l], ev[l], got.AsSpan(t * c.QDim + h * c.HeadDim, c.HeadDim));
                        Assert.True(err <= bound, $"{spec}: layer {l} position {pos + t} head {h}: error {err:G4} exceeds the bound {bound:G4}");
                        worstRatio = Math.Max(worstRatio, err / bound);
                        worstError = Math.Max(worstError, err);
                    }
            }
        output.WriteLine($"{spec}: largest error {worstError:G3}, at most {worstRatio:P1} of its bound; {store.Bytes} bytes held");
        if (o.Type != KvType.F32) Assert.True(worstError > 0, "a lossy store reproduced float32 exactly: is it quantizing at all?");
    }

    /// <summary>Largest element error of one head's output, and the bound for it.</summary>
    private static (double Error, double Bound) Check(FitLM.Model.ModelConfig c, ReadOnlySpan<float> q, int qp, int head,
        float[] k, float[] v, double[] ek, double[] ev, ReadOnlySpan<float> got)
    {
        int hd = c.HeadDim, kvDim = c.KvDim, off = head / (c.Heads / c.KvHeads) * hd, len = qp + 1;
        double scale = 1 / Math.Sqrt(hd);
        var s = new double[len];
        double delta = 0, max = double.NegativeInfinity;
        for (int j = 0; j < len; j++)
        {
            double dot = 0, dd = 0;
            for (int d = 0; d < hd; d++)
            {
                dot += q[d] * (double)k[j * kvDim + off + d];
                dd += Math.Abs(q[d]) * ek[j * kvDim + off + d];
            }
            s[j] = dot * scale;
            delta = Math.Max(delta, dd * scale);
            max = Math.Max(max, s[j]);
        }
        double sum = 0;
        for (int j = 0; j < len; j++) sum += s[j] = Math.Exp(s[j] - max);
        double worst = 0, bound = double.PositiveInfinity, spread = Math.Exp(2 * delta) - 1;
        for (int d = 0; d < hd; d++)
        {
            double o = 0, lo = double.PositiveInfinity, hi = double.NegativeInfinity, evMax = 0, vMax = 0;
            for (int j = 0; j < len; j++)
            {
                double x = v[j * kvDim + off + d];
                o += s[j] / sum * x;
                lo = Math.Min(lo, x);
                hi = Math.Max(hi, x);
                vMax = Math.Max(vMax, Math.Abs(x));
                evMax = Math.Max(evMax, ev[j * kvDim + off + d]);
            }
            // Float32 accumulation over at most `len` terms, relative to the values' magnitude.
            double rounding = 4 * len * 6e-8 * (vMax + evMax) + 1e-6 * (1 + delta) * vMax;
            double b = spread * (hi - lo) / 2 + evMax + rounding;
            double e = Math.Abs(got[d] - o);
            if (e / b > worst / bound || d == 0) { worst = e; bound = b; }
        }
        return (worst, bound);
    }

    private static double Quant(double range, double min, int bits) =>
        0.5 * (range + Math.Pow(2, -10) * Math.Abs(min) + 6e-8) / ((1 << bits) - 1) * (1 + Math.Pow(2, -9)) + 1e-6 * (Math.Abs(min) + range);

    private static double Half(double x) => Math.Pow(2, -11) * Math.Abs(x) + 6e-8;

    /// <summary>Bound of a min-max group over the given elements, applied to each of them (max with what is already there).</summary>
    private static void Group(IEnumerable<int> idx, Func<int, double> value, int bits, double[] eps)
    {
        var list = idx.ToList();
        double lo = list.Min(value), hi = list.Max(value), b = Quant(hi - lo, lo, bits);
        foreach (var i in list) eps[i] = Math.Max(eps[i], b);
    }

    /// <summary>RoPE rotates pairs (i, i + d/2) of each head (NEOX): each element's error becomes at most the pair's sum.</summary>
    private static void Rotate(FitLM.Model.ModelConfig c, double[] eps)
    {
        int hd = c.HeadDim, half = hd / 2;
        for (int row = 0; row < eps.Length / hd; row++)
            for (int i = 0; i < half; i++)
            {
                int a = row * hd + i, b = a + half;
                double s = eps[a] + eps[b];
                eps[a] = eps[b] = s;
            }
    }

    private static (double[][] K, double[][] V) Bounds(KvCacheOptions o, TestKvModel model, KvStoreFactory factory,
        (float[] Residual, float[] X, float[] K, float[] V)[] rows, float[][] kf, float[][] vf, int[] tokens)
    {
        var c = model.Config;
        int n = tokens.Length, kvDim = c.KvDim, hd = c.HeadDim, dim = c.Dim, bits = o.Bits, r = 2 * kvDim;
        var ek = new double[c.Layers][];
        var ev = new double[c.Layers][];
        for (int l = 0; l < c.Layers; l++)
        {
            ek[l] = new double[n * kvDim];
            ev[l] = new double[n * kvDim];
            var k = kf[l];
            var v = vf[l];
            switch (o.Type)
            {
                case KvType.F32:
                    break;
                case KvType.F16:
                    for (int i = 0; i < n * kvDim; i++) { ek[l][i] = Half(k[i]); ev[l][i] = Half(v[i]); }
                    break;
                case KvType.Kivi2:
                case KvType.Kivi4:
                    for (int i = 0; i < n * kvDim; i++) { ek[l][i] = Half(k[i]); ev[l][i] = Half(v[i]); }
                    for (int tile = 0; tile < n / G; tile++)
                    {
                        for (int ch = 0; ch < kvDim; ch++)
                            Group(Enumerable.Range(tile * G, G).Select(j => j * kvDim + ch), i => k[i], bits, ek[l]);
                        for (int j = tile * G; j < tile * G + G; j++)
                            for (int h = 0; h < c.KvHeads; h++)
                                for (int g0 = 0; g0 < hd; g0 += G)
                                    Group(Enumerable.Range(j * kvDim + h * hd + g0, Math.Min(G, hd - g0)), i => v[i], bits, ev[l]);
                    }
                    break;
                case KvType.XQuantCl:
                    break; // below, across layers
                default:
                    var form = KvStoreFactory.Form(c, o);
                    var raw = new double[n * kvDim * 2];   // error of [k; v] before bias and RoPE, per token
                    if (form == XQuantForm.X)
                    {
                        var x = rows[l].X;
                        var ex = new double[n * dim];
                        for (int t = 0; t < n; t++)
                            for (int g0 = 0; g0 < dim; g0 += G)
                                Group(Enumerable.Range(t * dim + g0, Math.Min(G, dim - g0)), i => x[i], bits, ex);
                        for (int t = 0; t < n; t++)
                            for (int d = 0; d < r; d++)
                            {
                                var w = (d < kvDim ? model.Wk[l] : model.Wv[l]).W;
                                int row = d % kvDim;
                                double e = 0;
                                for (int ch = 0; ch < dim; ch++) e += Math.Abs(w[row * dim + ch]) * ex[t * dim + ch];
                                raw[t * r + d] = e + 1e-5 * (1 + Math.Abs(d < kvDim ? rows[l].K[t * kvDim + row] : rows[l].V[t * kvDim + row]));
                            }
                    }
                    else
                    {
                        // The cached rows: [k; v] itself, or its latent z = Ũᵀ [k; v].
                        double[]? u = null;
                        if (form == XQuantForm.Latent)
                        {
                            var ut = factory.Basis!.Transposed[l];
                            u = ut.Select(h => (double)(float)h).ToArray();   // row i = i-th basis vector
                        }
                        var kv = new double[n * r];
                        for (int t = 0; t < n; t++)
                            for (int d = 0; d < kvDim; d++) { kv[t * r + d] = rows[l].K[t * kvDim + d]; kv[t * r + kvDim + d] = rows[l].V[t * kvDim + d]; }
                        var z = u == null ? kv : new double[n * r];
                        if (u != null)
                            for (int t = 0; t < n; t++)
                                for (int i = 0; i < r; i++)
                                {
                                    double s = 0;
                                    for (int d = 0; d < r; d++) s += u[i * r + d] * kv[t * r + d];
                                    z[t * r + i] = s;
                                }
                        var ez = new double[n * r];
                        for (int i = 0; i < ez.Length; i++) ez[i] = Half(z[i]) + 1e-6 * Math.Abs(z[i]);
                        if (o.XQuantPerChannel)
                            for (int tile = 0; tile < n / G; tile++)
                                for (int ch = 0; ch < r; ch++)
                                    Group(Enumerable.Range(tile * G, G).Select(j => j * r + ch), i => z[i], bits, ez);
                        else
                            for (int t = 0; t < n; t++)
                                for (int g0 = 0; g0 < r; g0 += G)
                                    Group(Enumerable.Range(t * r + g0, Math.Min(G, r - g0)), i => z[i], bits, ez);
                        for (int t = 0; t < n; t++)
                            for (int d = 0; d < r; d++)
                            {
                                if (u == null) { raw[t * r + d] = ez[t * r + d]; continue; }
                                // |Ũ e|_d + |(ŨŨᵀ − I) kv|_d
                                double e = 0, back = 0;
                                for (int i = 0; i < r; i++)
                                {
                                    e += Math.Abs(u[i * r + d]) * ez[t * r + i];
                                    back += u[i * r + d] * z[t * r + i];
                                }
                                raw[t * r + d] = e + Math.Abs(back - kv[t * r + d]) + 1e-5 * (1 + Math.Abs(kv[t * r + d]));
                            }
                    }
                    for (int t = 0; t < n; t++)
                        for (int d = 0; d < kvDim; d++) { ek[l][t * kvDim + d] = raw[t * r + d]; ev[l][t * kvDim + d] = raw[t * r + kvDim + d]; }
                    Rotate(c, ek[l]);
                    break;
            }
        }
        if (o.Type == KvType.XQuantCl)
        {
            // Mirror the accumulator x̂ (the codec is GroupQuant's, tested on its own) to get each layer's delta ranges.
            var xhat = new float[n * dim];
            for (int t = 0; t < n; t++) model.Embed(tokens[t], xhat.AsSpan(t * dim, dim));
            var block = new byte[GroupQuant.BlockBytes(bits)];
            for (int l = 1; l < c.Layers; l++)
            {
                var res = rows[l].Residual;
                for (int t = 0; t < n; t++)
                {
                    double e2 = 0;
                    var delta = new float[dim];
                    for (int ch = 0; ch < dim; ch++) delta[ch] = res[t * dim + ch] - xhat[t * dim + ch];
                    for (int g0 = 0; g0 < dim; g0 += G)
                    {
                        var part = delta.AsSpan(g0, Math.Min(G, dim - g0));
                        double lo = double.PositiveInfinity, hi = double.NegativeInfinity;
                        foreach (var x in part) { lo = Math.Min(lo, x); hi = Math.Max(hi, x); }
                        e2 += part.Length * Math.Pow(Quant(hi - lo, lo, bits), 2);
                        GroupQuant.Quantize(part, bits, block);
                        GroupQuant.Dequantize(block, bits, part);
                    }
                    for (int ch = 0; ch < dim; ch++) xhat[t * dim + ch] += delta[ch];
                    var xr = xhat.AsSpan(t * dim, dim);
                    double rms = Math.Sqrt(System.Numerics.Tensors.TensorPrimitives.SumOfSquares((ReadOnlySpan<float>)xr) / dim + c.RmsEps);
                    double dn = 2 * Math.Sqrt(e2) / rms;
                    for (int d = 0; d < 2 * kvDim; d++)
                    {
                        var w = (d < kvDim ? model.Wk[l] : model.Wv[l]).W;
                        int row = d % kvDim;
                        double wg = 0;
                        for (int ch = 0; ch < dim; ch++) wg += Math.Pow(w[row * dim + ch] * model.Norm[l][ch], 2);
                        double e = Math.Sqrt(wg) * dn + 1e-5 * (1 + Math.Abs(d < kvDim ? kf[l][t * kvDim + row] : vf[l][t * kvDim + row]));
                        if (d < kvDim) ek[l][t * kvDim + row] = e; else ev[l][t * kvDim + row] = e;
                    }
                }
                Rotate(c, ek[l]);
            }
        }
        return (ek, ev);
    }
}
