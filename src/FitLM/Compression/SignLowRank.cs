using FitLM.Runtime;
using System.Numerics.Tensors;
using FitLM.Weights;

namespace FitLM.Compression;

/// <summary>
/// BitStack's iterative absolute-value decomposition (Wang et al., 2024): R₀ = W; block i is
/// sign(R_{i−1}) ⊙ (U Vᵀ) with U Vᵀ the best rank-r approximation of |R_{i−1}|; R_i = R_{i−1} − block i.
/// Since sign ⊙ sign = 1, ‖R_{i−1} − sign ⊙ M‖ = ‖|R_{i−1}| − M‖, so the truncated SVD of the magnitudes is the
/// best block for the given signs and the residual never grows. The factors are rounded to fp16 before the
/// block is subtracted, so each residual is exactly what the stored blocks leave.
/// <para>
/// The top singular triplets come from randomized subspace iteration (Halko, Martinsson and Tropp): a few
/// products of |R| and |R|ᵀ with a thin block of vectors, then an exact eigen-decomposition of a small
/// (rank + oversampling)² matrix. Seeded, so the same matrix gives the same blocks on any machine thread count.
/// </para>
/// </summary>
public static class SignLowRank
{
    public sealed record Options
    {
        /// <summary>Extra vectors in the subspace beyond the rank (accuracy of the trailing singular vectors).</summary>
        public int Oversample { get; init; } = 8;
        /// <summary>Subspace (power) iterations.</summary>
        public int Iterations { get; init; } = 4;
        public ulong Seed { get; init; } = 1;
        public int Threads { get; init; } = Math.Max(1, Environment.ProcessorCount);
    }

    /// <summary>
    /// Decomposes W [rows × cols] (row-major) into <paramref name="blocks"/> blocks of rank <paramref name="rank"/>.
    /// <paramref name="residualNorms"/>, when given, receives ‖R_i‖_F for i = 0 .. blocks (i = 0: ‖W‖).
    /// </summary>
    public static List<StackBlock> Decompose(ReadOnlySpan<float> w, int rows, int cols, int blocks, int rank, Options? options = null,
        double[]? residualNorms = null, Action<int>? blockDone = null, CancellationToken ct = default)
    {
        var o = options ?? new Options();
        if (rows <= 0 || cols <= 0 || cols % 16 != 0) throw new FitLMException($"cannot decompose a {rows}×{cols} matrix (columns must be a multiple of 16)");
        if (w.Length != (long)rows * cols) throw new ArgumentException("matrix size does not match its shape");
        if (rank < 1 || rank > Math.Min(rows, cols)) throw new FitLMException($"rank {rank} is out of range for a {rows}×{cols} matrix");
        if (blocks < 1) throw new FitLMException($"block count {blocks} is out of range");
        var residual = w.ToArray();
        var abs = new float[residual.Length];
        var absT = new float[residual.Length];
        var signs = new byte[rows * cols / 8];
        var result = new List<StackBlock>(blocks);
        var vt = new float[rank * cols];
        var scratch = new float[cols];
        if (residualNorms != null) residualNorms[0] = Norm(residual);
        try
        {
            for (int b = 0; b < blocks; b++)
            {
                ct.ThrowIfCancellationRequested();
                PackSigns(residual, signs);
                TensorPrimitives.Abs(residual, abs);
                Transpose(abs, absT, rows, cols);
                var (u, v) = TopSingular(abs, absT, rows, cols, rank, o, o.Seed * 0x9E3779B97F4A7C15UL + (ulong)b);
                var uh = new Half[u.Length];
                var vh = new Half[v.Length];
                TensorPrimitives.ConvertToHalf(u, uh);
                TensorPrimitives.ConvertToHalf(v, vh);
                var block = StackBlock.Create(signs, uh, vh, rows, cols, rank);
                result.Add(block);
                block.TransposedV(vt);
                // R ← R − block, row by row with the same kernel that materializes blocks at inference.
                block.AddRows(residual, 0, rows, vt, scratch, negate: true);
                if (residualNorms != null) residualNorms[b + 1] = Norm(residual);
                blockDone?.Invoke(b + 1);
            }
        }
        catch
        {
            foreach (var x in result) x.Dispose();
            throw;
        }
        return result;
    }

    private static double Norm(ReadOnlySpan<float> x)
    {
        double s = 0;
        const int chunk = 4096;
        for (int i = 0; i < x.Length; i += chunk) s += TensorPrimitives.SumOfSquares(x.Slice(i, Math.Min(chunk, x.Length - i)));
        return Math.Sqrt(s);
    }

    /// <summary>Bit c of row r set where R[r, c] &lt; 0 (zero counts as positive, as in BitStack).</summary>
    public static void PackSigns(ReadOnlySpan<float> r, Span<byte> signs)
    {
        signs.Clear();
        for (int i = 0; i < r.Length; i++)
            if (r[i] < 0) signs[i >> 3] |= (byte)(1 << (i & 7));
    }

    private static void Transpose(float[] a, float[] t, int rows, int cols)
    {
        const int tile = 32;
        for (int r0 = 0; r0 < rows; r0 += tile)
            for (int c0 = 0; c0 < cols; c0 += tile)
                for (int r = r0; r < Math.Min(rows, r0 + tile); r++)
                    for (int c = c0; c < Math.Min(cols, c0 + tile); c++)
                        t[(long)c * rows + r] = a[(long)r * cols + c];
    }

    /// <summary>
    /// The top <paramref name="rank"/> singular triplets of A [rows × cols] (with Aᵀ given), returned as
    /// U·√Σ [rows × rank] and V·√Σ [cols × rank] (row-major), so that A ≈ (U√Σ)(V√Σ)ᵀ.
    /// </summary>
    internal static (float[] U, float[] V) TopSingular(float[] a, float[] at, int rows, int cols, int rank, Options o, ulong seed)
    {
        int l = Math.Min(rank + Math.Max(0, o.Oversample), Math.Min(rows, cols));
        var omega = new float[l * cols];   // l vectors of length cols (rows of Ωᵀ)
        var y = new float[l * rows];       // l vectors of length rows
        var rng = new SplitMixNormal(seed);
        for (int i = 0; i < omega.Length; i++) omega[i] = rng.NextNormal();
        Orthonormalize(omega, l, cols, ref rng);
        for (int it = 0; it < o.Iterations; it++)
        {
            Products(a, rows, cols, omega, l, y, o.Threads);   // y_k = A ω_k
            Orthonormalize(y, l, rows, ref rng);
            Products(at, cols, rows, y, l, omega, o.Threads);  // ω_k = Aᵀ y_k
            Orthonormalize(omega, l, cols, ref rng);
        }
        Products(a, rows, cols, omega, l, y, o.Threads);
        Orthonormalize(y, l, rows, ref rng);                       // Q: orthonormal basis of A's range, l × rows
        var b = new float[l * cols];
        Products(at, cols, rows, y, l, b, o.Threads);          // B = Qᵀ A (row k = Aᵀ q_k)

        // B Bᵀ = E Λ Eᵀ; then A ≈ Q B = (Qᵀ E) Σ (Bᵀ E Σ⁻¹)ᵀ.
        var c = new double[l, l];
        for (int i = 0; i < l; i++)
            for (int j = 0; j <= i; j++)
            {
                double s = Dot(b.AsSpan(i * cols, cols), b.AsSpan(j * cols, cols));
                c[i, j] = s;
                c[j, i] = s;
            }
        var (lambda, e) = SymmetricEigen(c);
        var u = new float[rows * rank];
        var v = new float[cols * rank];
        var colBuf = new double[Math.Max(rows, cols)];
        for (int k = 0; k < rank; k++)
        {
            int idx = lambda.Length - 1 - k; // eigenvalues ascending
            double sigma = Math.Sqrt(Math.Max(0, lambda[idx]));
            if (sigma <= 1e-30) continue;    // nothing left to approximate: a zero component
            double su = Math.Sqrt(sigma), sv = 1 / Math.Sqrt(sigma);
            Array.Clear(colBuf);
            for (int j = 0; j < l; j++)
            {
                double ej = e[j, idx];
                for (int r = 0; r < rows; r++) colBuf[r] += ej * y[j * rows + r];
            }
            for (int r = 0; r < rows; r++) u[r * rank + k] = (float)(colBuf[r] * su);
            Array.Clear(colBuf);
            for (int j = 0; j < l; j++)
            {
                double ej = e[j, idx];
                for (int cc = 0; cc < cols; cc++) colBuf[cc] += ej * b[j * cols + cc];
            }
            for (int cc = 0; cc < cols; cc++) v[cc * rank + k] = (float)(colBuf[cc] * sv);
        }
        return (u, v);
    }

    private static double Dot(ReadOnlySpan<float> x, ReadOnlySpan<float> y)
    {
        double s = 0;
        for (int i = 0; i < x.Length; i++) s += (double)x[i] * y[i];
        return s;
    }

    /// <summary>outs[k, i] = M[i, :] · xs[k, :] for M [m × n] row-major and l vectors xs of length n.</summary>
    private static void Products(float[] m, int mRows, int n, float[] xs, int l, float[] outs, int threads)
    {
        const int rowsPerTask = 32;
        int tasks = (mRows + rowsPerTask - 1) / rowsPerTask;
        Parallel.For(0, tasks, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, threads) }, t =>
        {
            int r0 = t * rowsPerTask, r1 = Math.Min(mRows, r0 + rowsPerTask);
            for (int i = r0; i < r1; i++)
            {
                var row = m.AsSpan(i * n, n);
                for (int k = 0; k < l; k++) outs[k * mRows + i] = TensorPrimitives.Dot(row, xs.AsSpan(k * n, n));
            }
        });
    }

    /// <summary>Gram–Schmidt, twice (CGS2), on l vectors of length n; a vector that vanishes is replaced by a random one.</summary>
    private static void Orthonormalize(float[] v, int l, int n, ref SplitMixNormal rng)
    {
        for (int k = 0; k < l; k++)
        {
            var vk = v.AsSpan(k * n, n);
            for (int attempt = 0; ; attempt++)
            {
                double before = Math.Sqrt(Dot(vk, vk));
                for (int pass = 0; pass < 2; pass++)
                    for (int j = 0; j < k; j++)
                    {
                        var vj = v.AsSpan(j * n, n);
                        float p = (float)Dot(vk, vj);
                        TensorPrimitives.MultiplyAdd(vj, -p, vk, vk);
                    }
                double norm = Math.Sqrt(Dot(vk, vk));
                if (norm > 1e-6 * Math.Max(before, 1e-30) && norm > 1e-30)
                {
                    TensorPrimitives.Multiply(vk, (float)(1 / norm), vk);
                    break;
                }
                if (attempt >= 3) { vk.Clear(); break; }
                for (int i = 0; i < n; i++) vk[i] = rng.NextNormal();
            }
        }
    }

    /// <summary>Cyclic Jacobi eigen-decomposition of a small symmetric matrix: eigenvalues ascending, eigenvectors as columns.</summary>
    internal static (double[] Values, double[,] Vectors) SymmetricEigen(double[,] input)
    {
        int n = input.GetLength(0);
        var a = (double[,])input.Clone();
        var v = new double[n, n];
        for (int i = 0; i < n; i++) v[i, i] = 1;
        for (int sweep = 0; sweep < 100; sweep++)
        {
            double off = 0, diag = 0;
            for (int i = 0; i < n; i++)
            {
                diag += a[i, i] * a[i, i];
                for (int j = i + 1; j < n; j++) off += a[i, j] * a[i, j];
            }
            if (off <= 1e-30 * Math.Max(diag, 1e-300)) break;
            for (int p = 0; p < n - 1; p++)
                for (int q = p + 1; q < n; q++)
                {
                    double apq = a[p, q];
                    if (Math.Abs(apq) < 1e-300) continue;
                    double theta = (a[q, q] - a[p, p]) / (2 * apq);
                    double t = Math.Sign(theta) / (Math.Abs(theta) + Math.Sqrt(theta * theta + 1));
                    if (theta == 0) t = 1;
                    double c = 1 / Math.Sqrt(t * t + 1), s = t * c;
                    for (int k = 0; k < n; k++)
                    {
                        double akp = a[k, p], akq = a[k, q];
                        a[k, p] = c * akp - s * akq;
                        a[k, q] = s * akp + c * akq;
                    }
                    for (int k = 0; k < n; k++)
                    {
                        double apk = a[p, k], aqk = a[q, k];
                        a[p, k] = c * apk - s * aqk;
                        a[q, k] = s * apk + c * aqk;
                    }
                    for (int k = 0; k < n; k++)
                    {
                        double vkp = v[k, p], vkq = v[k, q];
                        v[k, p] = c * vkp - s * vkq;
                        v[k, q] = s * vkp + c * vkq;
                    }
                }
        }
        var values = new double[n];
        for (int i = 0; i < n; i++) values[i] = a[i, i];
        var order = Enumerable.Range(0, n).OrderBy(i => values[i]).ToArray();
        var sortedValues = order.Select(i => values[i]).ToArray();
        var sortedVectors = new double[n, n];
        for (int j = 0; j < n; j++)
            for (int i = 0; i < n; i++) sortedVectors[i, j] = v[i, order[j]];
        return (sortedValues, sortedVectors);
    }
}
