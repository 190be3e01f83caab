namespace FitLM.Tensors;

/// <summary>
/// Products of a weight matrix W [rows × cols], stored row by row in any ggml type, with float activations.
/// y = W·x for one token (each row dotted in its own format), and Y = X·Wᵀ for a batch (each chunk of rows
/// dequantized once into a float tile, then multiplied with every token by <see cref="Gemm"/>). Work is
/// split over the <see cref="WorkerPool"/> by chunks of rows; nothing is allocated per call.
/// </summary>
public static unsafe class MatMul
{
    /// <summary>Rows per work item: enough work to amortize hand-out, few enough to balance threads.</summary>
    private const int RowsPerChunk = 16;

    public static int Threads { get; set; } = Math.Max(1, Environment.ProcessorCount);

    [ThreadStatic] private static MatVecJob? t_matVec;
    [ThreadStatic] private static MatMulJob? t_matMul;

    /// <summary>y[r] = dot(W[r], x) for r in [0, rows).</summary>
    public static void MatVec(GgmlType type, byte* w, long rowBytes, int rows, int cols, ReadOnlySpan<float> x, Span<float> y)
    {
        if (x.Length < cols || y.Length < rows) throw new ArgumentException("matvec size mismatch");
        fixed (float* px = x, py = y)
        {
            var job = t_matVec ??= new MatVecJob();
            job.Set(type, w, rowBytes, rows, cols, px, py);
            WorkerPool.Shared.Run(job, (rows + RowsPerChunk - 1) / RowsPerChunk);
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
            var job = t_matMul ??= new MatMulJob();
            job.Set(type, w, rowBytes, rows, cols, px, py, n);
            WorkerPool.Shared.Run(job, (rows + RowsPerChunk - 1) / RowsPerChunk);
        }
    }

    private sealed class MatVecJob : IParallelJob
    {
        private GgmlType _type;
        private byte* _w;
        private long _rowBytes;
        private int _rows, _cols;
        private float* _x, _y;

        public void Set(GgmlType type, byte* w, long rowBytes, int rows, int cols, float* x, float* y)
        {
            _type = type; _w = w; _rowBytes = rowBytes; _rows = rows; _cols = cols; _x = x; _y = y;
        }

        public void Execute(int chunk)
        {
            int r0 = chunk * RowsPerChunk, r1 = Math.Min(_rows, r0 + RowsPerChunk);
            var xs = new ReadOnlySpan<float>(_x, _cols);
            for (int r = r0; r < r1; r++)
                _y[r] = QuantDot.Dot(_type, new ReadOnlySpan<byte>(_w + r * _rowBytes, (int)_rowBytes), xs);
        }
    }

    private sealed class MatMulJob : IParallelJob
    {
        [ThreadStatic] private static float[]? t_tile;
        private GgmlType _type;
        private byte* _w;
        private long _rowBytes;
        private int _rows, _cols, _n;
        private float* _x, _y;
        private Gemm.Isa _isa;

        public void Set(GgmlType type, byte* w, long rowBytes, int rows, int cols, float* x, float* y, int n)
        {
            _type = type; _w = w; _rowBytes = rowBytes; _rows = rows; _cols = cols; _x = x; _y = y; _n = n;
            _isa = Gemm.Best;
        }

        public void Execute(int chunk)
        {
            // Dequantize this chunk's rows once into a float tile, then multiply it with every token.
            int r0 = chunk * RowsPerChunk, r1 = Math.Min(_rows, r0 + RowsPerChunk);
            int tileLen = RowsPerChunk * _cols;
            var tile = t_tile is { } b && b.Length >= tileLen ? b : t_tile = new float[tileLen];
            for (int r = r0; r < r1; r++)
            {
                var dst = tile.AsSpan((r - r0) * _cols, _cols);
                if (_type == GgmlType.F32) new ReadOnlySpan<float>(_w + r * _rowBytes, _cols).CopyTo(dst);
                else Dequantize.Row(_type, new ReadOnlySpan<byte>(_w + r * _rowBytes, (int)_rowBytes), dst);
            }
            fixed (float* tp = tile)
            {
                // Tokens in blocks that keep the tile and a block of activations in cache.
                const int TokenBlock = 64;
                for (int t0 = 0; t0 < _n; t0 += TokenBlock)
                    Gemm.Tile(tp, r1 - r0, _x + (long)t0 * _cols, Math.Min(TokenBlock, _n - t0), _cols, _y + (long)t0 * _rows + r0, _rows, _isa);
            }
        }
    }
}
