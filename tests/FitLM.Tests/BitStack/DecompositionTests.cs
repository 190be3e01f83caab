using FitLM.Compression;
using FsCheck;
using FsCheck.Fluent;
using Xunit;
using FitLM.Weights;

namespace FitLM.Tests.BitStack;

/// <summary>The sign × low-rank residual decomposition and its kernels.</summary>
public class DecompositionTests
{
    private static float[] Gaussian(int n, int seed, float scale = 1f)
    {
        var rng = new Random(seed);
        var a = new float[n];
        for (int i = 0; i < n; i++)
        {
            double u1 = 1 - rng.NextDouble(), u2 = rng.NextDouble();
            a[i] = scale * (float)(Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return a;
    }

    private static float[] Sum(IReadOnlyList<StackBlock> blocks, int count, int rows, int cols)
    {
        var w = new float[rows * cols];
        var scratch = new float[cols];
        foreach (var b in blocks.Take(count))
        {
            var vt = new float[b.Rank * cols];
            b.TransposedV(vt);
            b.AddRows(w, 0, rows, vt, scratch);
        }
        return w;
    }

    private static double Distance(float[] a, float[] b) => Math.Sqrt(a.Zip(b, (x, y) => (double)(x - y) * (x - y)).Sum());

    [Fact]
    public void RandomMatrixErrorFallsWithEveryBlock()
    {
        const int rows = 96, cols = 128, blocks = 8;
        // Rows and columns of different magnitude, as real weights have: the low-rank magnitudes capture it.
        var w = Gaussian(rows * cols, 1);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) w[r * cols + c] *= (1 + r % 7) * (1 + 0.5f * (c % 5));
        var norms = new double[blocks + 1];
        var list = SignLowRank.Decompose(w, rows, cols, blocks, rank: 4, residualNorms: norms);
        try
        {
            Assert.Equal(blocks, list.Count);
            for (int i = 1; i <= blocks; i++)
            {
                Assert.True(norms[i] < norms[i - 1], $"residual grew at block {i}: {norms[i - 1]} -> {norms[i]}");
                // The residual the decomposition reports is W minus the stored blocks, as any loader sums them.
                double d = Distance(w, Sum(list, i, rows, cols));
                Assert.InRange(d, norms[i] * (1 - 1e-4), norms[i] * (1 + 1e-4));
            }
            Assert.True(norms[blocks] < 0.2 * norms[0], $"8 blocks should remove most of the matrix ({norms[blocks] / norms[0]:F3} left)");
            // About one bit per weight per block (plus the thin factors).
            Assert.Equal(rows * cols / 8 + 2 * 4 * (rows + cols), list[0].Bytes);
        }
        finally
        {
            foreach (var b in list) b.Dispose();
        }
    }

    [Fact]
    public void FirstBlockIsTheBestSignTimesRankOneScale()
    {
        // A matrix that is exactly sign ⊙ (u vᵀ) with positive u, v is recovered by one rank-1 block.
        const int rows = 32, cols = 48;
        var rng = new Random(3);
        var u = Enumerable.Range(0, rows).Select(_ => 0.5 + rng.NextDouble()).ToArray();
        var v = Enumerable.Range(0, cols).Select(_ => 0.5 + rng.NextDouble()).ToArray();
        var w = new float[rows * cols];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) w[r * cols + c] = (float)(u[r] * v[c] * (rng.Next(2) == 0 ? -1 : 1));
        var norms = new double[2];
        var list = SignLowRank.Decompose(w, rows, cols, 1, rank: 1, residualNorms: norms);
        try
        {
            Assert.True(norms[1] < 2e-3 * norms[0], $"relative error {norms[1] / norms[0]}");
        }
        finally
        {
            foreach (var b in list) b.Dispose();
        }
    }

    [Fact]
    public void ZeroMatrixGivesZeroBlocks()
    {
        var list = SignLowRank.Decompose(new float[16 * 32], 16, 32, 3, rank: 2);
        try
        {
            Assert.All(Sum(list, 3, 16, 32), x => Assert.Equal(0f, x));
        }
        finally
        {
            foreach (var b in list) b.Dispose();
        }
    }

    [Fact]
    public void DecompositionIsReproducible()
    {
        var w = Gaussian(40 * 64, 9);
        var a = SignLowRank.Decompose(w, 40, 64, 3, 3, new SignLowRank.Options { Threads = 1 });
        var b = SignLowRank.Decompose(w, 40, 64, 3, 3, new SignLowRank.Options { Threads = 4 });
        try
        {
            for (int i = 0; i < 3; i++)
            {
                Assert.True(a[i].Signs.SequenceEqual(b[i].Signs));
                Assert.True(a[i].U.SequenceEqual(b[i].U));
                Assert.True(a[i].V.SequenceEqual(b[i].V));
            }
        }
        finally
        {
            foreach (var x in a.Concat(b)) x.Dispose();
        }
    }

    [Fact]
    public void DirectKernelMatchesTheMaterializedBlock()
    {
        const int rows = 24, cols = 64, rank = 3;
        var w = Gaussian(rows * cols, 5);
        var list = SignLowRank.Decompose(w, rows, cols, 2, rank);
        try
        {
            var x = Gaussian(cols, 6);
            var dense = Sum(list, 2, rows, cols);
            var expected = new float[rows];
            for (int r = 0; r < rows; r++)
                for (int c = 0; c < cols; c++) expected[r] += dense[r * cols + c] * x[c];
            var y = new float[rows];
            var z = new float[rank * cols];
            foreach (var b in list)
            {
                var vt = new float[rank * cols];
                b.TransposedV(vt);
                b.MultiplyAdd(vt, x, y, 0, rows, z);
            }
            for (int r = 0; r < rows; r++) Assert.Equal(expected[r], y[r], 1e-3f);
        }
        finally
        {
            foreach (var b in list) b.Dispose();
        }
    }

    [Fact]
    public void SignsPackLeastSignificantBitFirst()
    {
        var r = new float[16];
        r[0] = -1; r[3] = -2; r[8] = -0.5f; r[15] = -3; r[1] = 0; // zero counts as positive
        var s = new byte[2];
        SignLowRank.PackSigns(r, s);
        Assert.Equal(new byte[] { 0b0000_1001, 0b1000_0001 }, s);
    }

    [Fact]
    public void EigenDecompositionOfASymmetricMatrix()
    {
        var rng = new Random(2);
        int n = 9;
        var a = new double[n, n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j <= i; j++) a[i, j] = a[j, i] = rng.NextDouble() - 0.5;
        var (values, vectors) = SignLowRank.SymmetricEigen(a);
        for (int k = 1; k < n; k++) Assert.True(values[k] >= values[k - 1]);
        for (int k = 0; k < n; k++)
            for (int i = 0; i < n; i++)
            {
                double av = 0;
                for (int j = 0; j < n; j++) av += a[i, j] * vectors[j, k];
                Assert.Equal(values[k] * vectors[i, k], av, 9);
            }
    }

    [Fact]
    public void ErrorNeverGrowsForAnyShapeOrRank()
    {
        var gen =
            from rows in Gen.Choose(1, 40)
            from cols16 in Gen.Choose(1, 4)
            from rank in Gen.Choose(1, 6)
            from seed in Gen.Choose(0, 1000)
            select (rows, cols: cols16 * 16, rank, seed);
        var property = Prop.ForAll(Arb.From(gen), t =>
        {
            int rank = Math.Min(t.rank, Math.Min(t.rows, t.cols));
            var w = Gaussian(t.rows * t.cols, t.seed, 0.02f);
            var norms = new double[5];
            var list = SignLowRank.Decompose(w, t.rows, t.cols, 4, rank, residualNorms: norms);
            foreach (var b in list) b.Dispose();
            for (int i = 1; i < norms.Length; i++)
                if (!(norms[i] <= norms[i - 1] * (1 + 1e-6))) return false;
            return norms[1] < norms[0];
        });
        Check.One(Config.QuickThrowOnFailure.WithMaxTest(60).WithQuietOnSuccess(true), property);
    }

    [Fact]
    public void BadShapesAreRejected()
    {
        Assert.Throws<FitLMException>(() => SignLowRank.Decompose(new float[8 * 10], 8, 10, 1, 1));
        Assert.Throws<FitLMException>(() => SignLowRank.Decompose(new float[8 * 16], 8, 16, 1, 9));
        Assert.Throws<FitLMException>(() => SignLowRank.Decompose(new float[8 * 16], 8, 16, 0, 1));
    }
}
