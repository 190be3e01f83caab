using System.Numerics.Tensors;
using MathNet.Numerics.LinearAlgebra;

namespace FitLM.KvCache;

/// <summary>
/// XQuant's basis for grouped-query models: per layer the left singular vectors U of W = [Wk; Wv]
/// (2·KvDim × Dim), from the eigen-decomposition of W·Wᵀ = U Σ² Uᵀ. Since [k; v] = W·x = U (Σ Vᵀ x), the latent
/// z = Uᵀ [k; v] = Σ Vᵀ x is X projected onto the row space of W — everything K and V can see of X — in
/// 2·KvDim numbers instead of Dim, ordered by singular value; [k; v] = U z rematerializes exactly. Uᵀ is kept
/// in float16 (row i = i-th singular vector) and counted as KV memory.
/// </summary>
internal sealed class LatentBasis
{
    /// <summary>Uᵀ of each layer, [r × r] row-major, r = 2·KvDim.</summary>
    public Half[][] Transposed { get; }
    /// <summary>Singular values of each layer, descending.</summary>
    public double[][] Sigma { get; }
    public int Rank { get; }
    public long Bytes => (long)Transposed.Length * Rank * Rank * 2;

    public static long BytesFor(KvShape c) => (long)c.Layers * (2L * c.KvDim) * (2L * c.KvDim) * 2;

    private LatentBasis(Half[][] ut, double[][] sigma, int rank)
    {
        Transposed = ut;
        Sigma = sigma;
        Rank = rank;
    }

    public static LatentBasis Compute(IKvModel model)
    {
        var c = model.Config;
        int r = 2 * c.KvDim, dim = c.Dim;
        var ut = new Half[c.Layers][];
        var sigma = new double[c.Layers][];
        var read = new object();
        Parallel.For(0, c.Layers, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, Tensors.MatMul.Threads) }, l =>
        {
            // W = [Wk; Wv], dequantized row by row (one layer at a time: weight providers need not be thread-safe).
            var w = new float[r * dim];
            lock (read)
            {
                var wk = model.KeyWeights(l);
                var wv = model.ValueWeights(l);
                for (int i = 0; i < c.KvDim; i++)
                {
                    wk.ReadRow(i, w.AsSpan(i * dim, dim));
                    wv.ReadRow(i, w.AsSpan((c.KvDim + i) * dim, dim));
                }
            }
            var gram = Matrix<double>.Build.Dense(r, r);
            for (int i = 0; i < r; i++)
                for (int j = 0; j <= i; j++)
                {
                    double d = TensorPrimitives.Dot(w.AsSpan(i * dim, dim), w.AsSpan(j * dim, dim));
                    gram[i, j] = d;
                    gram[j, i] = d;
                }
            var evd = gram.Evd(Symmetricity.Symmetric);
            var values = evd.EigenValues;
            var vectors = evd.EigenVectors;
            // Eigenvalues come ascending: reverse so latent dimension 0 carries the most energy.
            var order = Enumerable.Range(0, r).OrderByDescending(i => values[i].Real).ToArray();
            var u = new Half[r * r];
            var s = new double[r];
            for (int k = 0; k < r; k++)
            {
                s[k] = Math.Sqrt(Math.Max(0, values[order[k]].Real));
                for (int j = 0; j < r; j++) u[k * r + j] = (Half)vectors[j, order[k]];
            }
            ut[l] = u;
            sigma[l] = s;
        });
        return new LatentBasis(ut, sigma, r);
    }
}
