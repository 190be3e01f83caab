using Xunit;
using FitLM.Training;
using static FitLM.Tests.Training.GradientCheck;

namespace FitLM.Tests.Training;

/// <summary>
/// Grouped-query causal attention over a batch of two sequences of different lengths: the forward's output and
/// log-sum-exp against a double-precision softmax attention, and dq, dk, dv against its central differences.
/// </summary>
public class CausalAttentionGradientTests
{
    /// <summary>Σ O · dO of attention in double; o and lse receive the output and each row's log-sum-exp.</summary>
    private static double Reference((int Start, int Length)[] seqs, int heads, int kvHeads, int hd,
        double[] q, double[] k, double[] v, float[] dO, double[]? o = null, double[]? lse = null)
    {
        int qDim = heads * hd, kvDim = kvHeads * hd, rep = heads / kvHeads;
        double scale = 1 / Math.Sqrt(hd), loss = 0;
        foreach (var (start, len) in seqs)
            for (int h = 0; h < heads; h++)
            {
                int g = h / rep;
                var s = new double[len];
                for (int i = 0; i < len; i++)
                {
                    double max = double.NegativeInfinity;
                    for (int j = 0; j <= i; j++)
                    {
                        double dot = 0;
                        for (int e = 0; e < hd; e++) dot += q[(start + i) * qDim + h * hd + e] * k[(start + j) * kvDim + g * hd + e];
                        s[j] = dot * scale;
                        max = Math.Max(max, s[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j <= i; j++) sum += Math.Exp(s[j] - max);
                    if (lse != null) lse[(start + i) * heads + h] = max + Math.Log(sum);
                    for (int e = 0; e < hd; e++)
                    {
                        double oe = 0;
                        for (int j = 0; j <= i; j++) oe += Math.Exp(s[j] - max) / sum * v[(start + j) * kvDim + g * hd + e];
                        int at = (start + i) * qDim + h * hd + e;
                        if (o != null) o[at] = oe;
                        loss += oe * dO[at];
                    }
                }
            }
        return loss;
    }

    [Theory]
    [InlineData(2, 2, 8)]   // 1 query head per KV head
    [InlineData(4, 2, 12)]  // 2
    [InlineData(4, 1, 16)]  // 4
    [InlineData(8, 2, 10)]  // 4, two KV groups
    public void BackwardMatchesCentralDifferences(int heads, int kvHeads, int hd)
    {
        (int, int)[] seqs = [(0, 6), (6, 3)];
        int n = 9, qDim = heads * hd, kvDim = kvHeads * hd;
        var rng = new Random(heads * 100 + kvHeads * 10 + hd);
        // Scores of a few units, so the softmax is far from uniform and from one-hot.
        var q = Uniform(rng, n * qDim, 1.5);
        var k = Uniform(rng, n * kvDim, 1.5);
        var v = Uniform(rng, n * kvDim);
        var dO = Uniform(rng, n * qDim);

        var attention = new CausalAttention(heads, kvHeads, hd);
        var o = new float[n * qDim];
        var lse = new float[n * heads];
        attention.Forward(seqs, q, k, v, o, lse);
        var qd = ToDouble(q);
        var kd = ToDouble(k);
        var vd = ToDouble(v);
        var oRef = new double[n * qDim];
        var lseRef = new double[n * heads];
        Reference(seqs, heads, kvHeads, hd, qd, kd, vd, dO, oRef, lseRef);
        AssertClose(oRef, o, 1e-5, "o");
        AssertClose(lseRef, lse, 1e-5, "lse");

        var dq = Uniform(rng, n * qDim); // overwritten: garbage in must not leak out
        var dk = Uniform(rng, n * kvDim);
        var dv = Uniform(rng, n * kvDim);
        attention.Backward(seqs, q, k, v, o, lse, dO, dq, dk, dv);

        double Loss() => Reference(seqs, heads, kvHeads, hd, qd, kd, vd, dO);
        AssertClose(CentralDifferences(qd, Loss), dq, 1e-4, "dq");
        AssertClose(CentralDifferences(kd, Loss), dk, 1e-4, "dk");
        AssertClose(CentralDifferences(vd, Loss), dv, 1e-4, "dv");
    }
}
