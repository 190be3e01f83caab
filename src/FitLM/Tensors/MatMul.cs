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
            Parallel.For(0, chunks, new ParallelOptions { MaxDegreeOfParallelism = Threads }, c =>
            {
                var row = t_row is { } b && b.Length >= cols ? b : t_row = new float[cols];
                var rs = row.AsSpan(0, cols);
                int r0 = c * RowsPerChunk, r1 = Math.Min(rows, r0 + RowsPerChunk);
                for (int r = r0; r < r1; r++)
                {
                    if (type == GgmlType.F32) new ReadOnlySpan<float>(w + r * rowBytes, cols).CopyTo(rs);
                    else Dequantize.Row(type, new ReadOnlySpan<byte>(w + r * rowBytes, (int)rowBytes), rs);
                    for (int t = 0; t < n; t++)
                        yp[(long)t * rows + r] = TensorPrimitives.Dot(rs, new ReadOnlySpan<float>(xp + (long)t * cols, cols));
                }
            });
        }
    }
}
