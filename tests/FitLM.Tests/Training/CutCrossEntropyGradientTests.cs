using Xunit;
using FitLM.Tensors;
using FitLM.Training;
using static FitLM.Tests.Training.GradientCheck;

namespace FitLM.Tests.Training;

/// <summary>
/// Cut Cross-Entropy against the materialized log-softmax cross-entropy in double: the loss, and dLoss/dh by
/// central differences, over vocabulary blocks that do not divide the vocabulary, with rows that have no target.
/// </summary>
public class CutCrossEntropyGradientTests
{
    private static double Reference(double[] h, double[] w, int n, int dim, int vocab, int[] targets)
    {
        double loss = 0;
        var logits = new double[vocab];
        for (int t = 0; t < n; t++)
        {
            if (targets[t] < 0) continue;
            double max = double.NegativeInfinity;
            for (int v = 0; v < vocab; v++)
            {
                double s = 0;
                for (int e = 0; e < dim; e++) s += h[t * dim + e] * w[v * dim + e];
                logits[v] = s;
                max = Math.Max(max, s);
            }
            double sum = 0;
            for (int v = 0; v < vocab; v++) sum += Math.Exp(logits[v] - max);
            loss += max + Math.Log(sum) - logits[targets[t]];
        }
        return loss;
    }

    [Theory]
    [InlineData(37, 16, 6, 8, 1.0)]      // 5 blocks, the last of 5 rows
    [InlineData(300, 24, 5, 64, 1.0)]    // 5 blocks, the last of 44
    [InlineData(50, 12, 4, 1024, 1.0)]   // one block larger than the vocabulary
    [InlineData(41, 16, 5, 7, 4.0)]      // logits of ±30: the running maximum must rescale the running sum
    public void LossAndGradientMatchMaterializedSoftmax(int vocab, int dim, int n, int block, double scale)
    {
        var rng = new Random(vocab * 31 + dim);
        var w = Uniform(rng, vocab * dim, scale / Math.Sqrt(dim) * 2);
        var h = Uniform(rng, n * dim, scale);
        var targets = new int[n];
        for (int t = 0; t < n; t++) targets[t] = rng.Next(vocab);
        targets[1] = -1;
        targets[n - 1] = -1;
        targets[0] = vocab - 1; // a target in the short last block
        using var output = Matrix("output.weight", GgmlType.F32, w, vocab, dim);
        var cce = new CutCrossEntropy(output, block);

        var hd = ToDouble(h);
        var wd = ToDouble(w);
        double expected = Reference(hd, wd, n, dim, vocab, targets);
        const float gradScale = 0.25f;
        var dh = Uniform(rng, n * dim); // overwritten
        double loss = cce.Loss(h, n, targets, dh, gradScale);
        Assert.True(Math.Abs(loss - expected) <= 1e-5 * Math.Abs(expected), $"loss {loss} vs materialized {expected}");
        double lossOnly = cce.Loss(h, n, targets, [], 0f);
        Assert.Equal(loss, lossOnly);

        for (int e = 0; e < dim; e++)
        {
            Assert.Equal(0f, dh[1 * dim + e]);
            Assert.Equal(0f, dh[(n - 1) * dim + e]);
        }
        var fd = CentralDifferences(hd, () => gradScale * Reference(hd, wd, n, dim, vocab, targets));
        AssertClose(fd, dh, 1e-4, "dh");
    }
}
