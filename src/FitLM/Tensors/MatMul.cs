using System.Numerics.Tensors;

namespace FitLM.Tensors;

/// <summary>
/// Products of a weight matrix W [rows × cols], stored row by row in any ggml type, with float activations.
/// y = W·x for one token (each row dotted in its own format), and Y = X·Wᵀ for a batch (each row dequantized
/// once, then dotted with every token), split over threads by rows.
/// </summary>
public static unsafe class MatMul
{
    /// <summary>Rows per work item: enough work to amortize scheduling, few enough to balance threads.</summary>
    private const int RowsPerChunk = 16;

    [ThreadStatic] private static float[]? t_row;

    public static int Threads { get; set; } = Math.Max(1, Environment.ProcessorCount);

    /// <summary>y[r] = dot(W[r], x) for r in [0, rows).</summary>
    public static void MatVec(GgmlType type, byte* w, long rowBytes, int rows, int cols, ReadOnlySpan<float> x, Span<float> y)
    {
        if (x.Length < cols || y.Length < rows) throw new ArgumentException("matvec size mismatch");
        fixed (float* px = x, py = y)
        {
            float* xp = px, yp = py;
            int chunks = (rows + RowsPerChunk - 1) / RowsPerChunk;
            Parallel.For(0, chunks, new ParallelOptions { MaxDegreeOfParallelism = Threads }, c =>
            {
                int r0 = c * RowsPerChunk, r1 = Math.Min(rows, r0 + RowsPerChunk);
                var xs = new ReadOnlySpan<float>(xp, cols);
                for (int r = r0; r < r1; r++)
                    yp[r] = QuantDot.Dot(type, new ReadOnlySpan<byte>(w + r * rowBytes, (int)rowBytes), xs);
            });
        }
    }

    /// <summary>Y[t, r] = dot(W[r], X[t]) for t in [0, n): X is [n × cols], Y is [n × rows], both row-major.</summary>
    public static void MatMulBatch(GgmlType type, byte* w, long rowBytes, int rows, int cols, ReadOnlySpan<float> x, Span<float> y, int n)
    {
        if (n == 1)
        {
            MatVec(type, w, rowBytes, rows, cols, x, y);
            return;
        }
        if (x.Length < (long)n * cols || y.Length < (long)n * rows) throw new ArgumentException("matmul size mismatch");
        fixed (float* px = x, py = y)
        {
            float* xp = px, yp = py;
            int chunks = (rows + RowsPerChunk - 1) / RowsPerChunk;
            var isa = Gemm.Best;
            Parallel.For(0, chunks, new ParallelOptions { MaxDegreeOfParallelism = Threads }, c =>
            {
                // Dequantize this chunk's rows once into a float tile, then multiply it with every token.
                int r0 = c * RowsPerChunk, r1 = Math.Min(rows, r0 + RowsPerChunk);
                int tileLen = RowsPerChunk * cols;
                var tile = t_row is { } b && b.Length >= tileLen ? b : t_row = new float[tileLen];
                for (int r = r0; r < r1; r++)
                {
                    var dst = tile.AsSpan((r - r0) * cols, cols);
                    if (type == GgmlType.F32) new ReadOnlySpan<float>(w + r * rowBytes, cols).CopyTo(dst);
                    else Dequantize.Row(type, new ReadOnlySpan<byte>(w + r * rowBytes, (int)rowBytes), dst);
                }
                fixed (float* tp = tile)
                {
                    // Tokens in blocks that keep the tile and a block of activations in L2.
                    const int TokenBlock = 64;
                    for (int t0 = 0; t0 < n; t0 += TokenBlock)
                        Gemm.Tile(tp, r1 - r0, xp + (long)t0 * cols, Math.Min(TokenBlock, n - t0), cols, yp + (long)t0 * rows + r0, rows, isa);
                }
            });
        }
    }
}
