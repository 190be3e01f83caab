namespace FitLM.Tensors;

/// <summary>
/// Products of a weight matrix W [rows × cols], stored row by row in any ggml type: y = W·x for one token
/// (decode) and Y = X·Wᵀ for a batch (prefill). Work is split over the <see cref="WorkerPool"/> by chunks of
/// rows; nothing is allocated per call (buffers are thread-static, sized on first use).
/// <list type="bullet">
/// <item>Quantized weights (q4_0 … q6_K): the activations are quantized once per call, as llama.cpp does
/// (q8_0 / q8_1 / q8_K, <see cref="ActivationQuant"/>), then decode runs <see cref="IntDot"/> row by row and
/// prefill repacks both sides for the <see cref="IntGemm"/> tile kernel.</item>
/// <item>F32 / F16 / BF16 weights keep float activations: decode runs <see cref="FloatDot"/>, prefill
/// converts a chunk of rows to float once and multiplies it with every token (<see cref="FloatGemm"/> with
/// AVX-512, else <see cref="Gemm"/>).</item>
/// <item>Other types (q8_1, q8_K weights, which models do not use) fall back to <see cref="QuantDot"/> and
/// dequantization.</item>
/// </list>
/// </summary>
internal static unsafe class MatMul
{
    /// <summary>Rows per work item of the portable float prefill (<see cref="Gemm"/>) and the fallback types.</summary>
    private const int RowsPerChunk = 16;

    /// <summary>
    /// Rows per decode work item: up to 64 (long sequential streams for the prefetchers; 16-row items measured
    /// ~10% slower from DRAM), but at least 4 items per thread so that a delayed thread is covered.
    /// </summary>
    private static int DecodeRowsPerChunk(int rows) => Math.Clamp(rows / (4 * Threads) / 16 * 16, 16, 64);

    /// <summary>Rows per work item of the integer prefill: the decoded rows are reused for every token.</summary>
    private const int GemmRowsPerChunk = 16;

    /// <summary>
    /// Tokens per pass of the integer prefill tile: a pass streams 128·cols bytes of packed activations (256 KiB
    /// for cols = 2048) once per 4 rows, from L2; longer batches are cut into passes that stay there.
    /// </summary>
    private const int TokenBlock = 128;

    /// <summary>Threads of the process's <see cref="WorkerPool"/>: <see cref="CpuOptions.Threads"/> unless the CLI's --threads set it.</summary>
    public static int Threads { get; set; } = CpuOptions.Default.Threads;

    [ThreadStatic] private static MatVecJob? t_matVec;
    [ThreadStatic] private static MatMulJob? t_matMul;
    [ThreadStatic] private static IntGemmJob? t_intGemm;
    [ThreadStatic] private static QuantizePackJob? t_quantizePack;
    [ThreadStatic] private static FloatGemmJob? t_floatGemm;
    [ThreadStatic] private static PackXJob? t_packX;
    [ThreadStatic] private static QuantizedActivations? t_act;
    [ThreadStatic] private static IntGemm.PackedActivations? t_packed;
    [ThreadStatic] private static float[]? t_packedX;

    /// <summary>Rows per work item of the float prefill (4 micro-tiles of <see cref="FloatGemm.R"/> rows).</summary>
    private const int FloatRowsPerChunk = 4 * FloatGemm.R;

    /// <summary>y[r] = dot(W[r], x) for r in [0, rows).</summary>
    public static void MatVec(GgmlType type, byte* w, long rowBytes, int rows, int cols, ReadOnlySpan<float> x, Span<float> y) =>
        MatVec(type, w, rowBytes, rows, cols, x, y, IntDot.Best, FloatDot.Best);

    [ThreadStatic] private static bool t_rowWise;
    [ThreadStatic] private static MultiVecJob? t_multiVec;

    /// <summary>
    /// On this thread, a product of several rows computes each row exactly as a one-row product (the
    /// matrix-vector kernel), reading each chunk of weights once for all rows. Decoding a batch of sequences this
    /// way gives every sequence the logits it gets alone, bit for bit: the matrix-matrix kernel sums in another
    /// order (about 1e-6 relative), which the next layer's activation quantization can amplify into another
    /// greedy token. The server decodes with it; prefill keeps the matrix-matrix kernel. A pass sets it for its
    /// duration from its options (<see cref="CpuOptions.BatchInvariant"/>) through <see cref="RowWiseScope"/>.
    /// </summary>
    public static bool RowWise => t_rowWise;

    /// <summary>
    /// Sets <see cref="RowWise"/> on this thread until the scope is disposed, then restores what it was: a forward
    /// pass applies its batch-invariance this way, and code inside one that must not depend on it (a KV store
    /// rematerializing rows) turns it off for its own products.
    /// </summary>
    public static RowWiseSetting RowWiseScope(bool on)
    {
        var previous = new RowWiseSetting(t_rowWise);
        t_rowWise = on;
        return previous;
    }

    /// <summary>The <see cref="RowWise"/> a <see cref="RowWiseScope"/> restores when disposed (a struct: nothing allocated per pass).</summary>
    public readonly struct RowWiseSetting(bool previous) : IDisposable
    {
        public void Dispose() => t_rowWise = previous;
    }

    /// <summary>Y[t, r] = dot(W[r], X[t]) for t in [0, n): X is [n × cols], Y is [n × rows], both row-major.</summary>
    public static void MatMulBatch(GgmlType type, byte* w, long rowBytes, int rows, int cols, ReadOnlySpan<float> x, Span<float> y, int n) =>
        MatMulBatch(type, w, rowBytes, rows, cols, x, y, n, IntDot.Best, FloatDot.Best);

    private static void CheckShape(GgmlType type, long rowBytes, int cols)
    {
        if (!GgmlTypes.IsSupported(type)) throw new FitLMException($"matmul: unsupported tensor type {type}");
        int bs = GgmlTypes.BlockSize(type);
        if (cols % bs != 0 || rowBytes < GgmlTypes.RowBytes(type, cols))
            throw new FitLMException($"matmul: a {type} row of {cols} elements does not fit {rowBytes} bytes in whole blocks");
    }

    /// <summary><see cref="MatVec(GgmlType, byte*, long, int, int, ReadOnlySpan{float}, Span{float})"/> on a forced code path (tests).</summary>
    internal static void MatVec(GgmlType type, byte* w, long rowBytes, int rows, int cols, ReadOnlySpan<float> x, Span<float> y,
        IntDot.Isa isa, FloatDot.Isa fisa)
    {
        if (x.Length < cols || y.Length < rows) throw new ArgumentException("matvec size mismatch");
        CheckShape(type, rowBytes, cols);
        fixed (float* px = x, py = y)
        {
            var job = t_matVec ??= new MatVecJob();
            if (IntDot.Supports(type))
            {
                // Quantize the activations once for all rows (llama.cpp's numerics), then integer dots.
                var act = t_act ??= new QuantizedActivations();
                ActivationQuant.Quantize(type, px, cols, 1, act, vector: isa != IntDot.Isa.Scalar);
                job.SetInt(IntDot.Kernel(type, isa), act.Row(0));
            }
            else if (FloatDot.Supports(type)) job.SetFloat(FloatDot.Kernel(type, fisa));
            else job.SetFallback(type);
            int chunk = DecodeRowsPerChunk(rows);
            job.Set(w, rowBytes, rows, cols, px, py, chunk);
            WorkerPool.Shared.Run(job, (rows + chunk - 1) / chunk);
        }
    }

    /// <summary>
    /// <see cref="MatMulBatch(GgmlType, byte*, long, int, int, ReadOnlySpan{float}, Span{float}, int)"/> on a forced
    /// code path (tests). With <see cref="IntDot.Isa.Scalar"/> quantized types run the scalar reference per token.
    /// </summary>
    internal static void MatMulBatch(GgmlType type, byte* w, long rowBytes, int rows, int cols, ReadOnlySpan<float> x, Span<float> y, int n,
        IntDot.Isa isa, FloatDot.Isa fisa)
    {
        if (n == 1)
        {
            MatVec(type, w, rowBytes, rows, cols, x, y, isa, fisa);
            return;
        }
        if (n <= 0) return;
        if (x.Length < (long)n * cols || y.Length < (long)n * rows) throw new ArgumentException("matmul size mismatch");
        CheckShape(type, rowBytes, cols);
        if (t_rowWise)
        {
            RowWiseBatch(type, w, rowBytes, rows, cols, x, y, n, isa, fisa);
            return;
        }
        if (IntDot.Supports(type) && isa == IntDot.Isa.Scalar)
        {
            for (int t = 0; t < n; t++)
                MatVec(type, w, rowBytes, rows, cols, x.Slice(t * cols, cols), y.Slice(t * rows, rows), isa, fisa);
            return;
        }
        fixed (float* px = x, py = y)
        {
            if (IntDot.Supports(type))
            {
                var act = t_act ??= new QuantizedActivations();
                var packed = t_packed ??= new IntGemm.PackedActivations();
                // Tokens quantized and packed by group on every thread: on one thread it was 13% of a q4_0 prefill
                // with the other waiting (llama-0.8b pp512, perf).
                var format = ActivationQuant.FormatFor(type);
                ActivationQuant.Shape(format, cols, n, act);
                IntGemm.ShapeActivations(type, act, packed);
                var quantize = t_quantizePack ??= new QuantizePackJob();
                quantize.Set(format, px, cols, act, packed);
                WorkerPool.Shared.Run(quantize, packed.Groups);
                var job = t_intGemm ??= new IntGemmJob();
                job.Set(type, w, rowBytes, rows, cols, packed, py, n, isa);
                WorkerPool.Shared.Run(job, (rows + GemmRowsPerChunk - 1) / GemmRowsPerChunk);
            }
            else if (fisa == FloatDot.Isa.Vector512 && FloatGemm.IsSupported && FloatDot.Supports(type))
            {
                // Tokens packed once for all chunks (16 per register along k), then the outer-product tile.
                long len = FloatGemm.PackedLength(n, cols);
                var xp = t_packedX is { } b && b.Length >= len ? b : t_packedX = new float[len];
                fixed (float* pxp = xp)
                {
                    var pack = t_packX ??= new PackXJob();
                    pack.Set(px, n, cols, pxp);
                    WorkerPool.Shared.Run(pack, (n + FloatGemm.T - 1) / FloatGemm.T);
                    var job = t_floatGemm ??= new FloatGemmJob();
                    job.Set(type, w, rowBytes, rows, cols, pxp, py, n);
                    WorkerPool.Shared.Run(job, (rows + FloatRowsPerChunk - 1) / FloatRowsPerChunk);
                }
            }
            else
            {
                var job = t_matMul ??= new MatMulJob();
                job.Set(type, w, rowBytes, rows, cols, px, py, n, fisa);
                WorkerPool.Shared.Run(job, (rows + RowsPerChunk - 1) / RowsPerChunk);
            }
        }
    }

    /// <summary>Each of n rows as <see cref="MatVec(GgmlType, byte*, long, int, int, ReadOnlySpan{float}, Span{float}, IntDot.Isa, FloatDot.Isa)"/> computes it, weights read once per chunk.</summary>
    private static void RowWiseBatch(GgmlType type, byte* w, long rowBytes, int rows, int cols, ReadOnlySpan<float> x, Span<float> y, int n,
        IntDot.Isa isa, FloatDot.Isa fisa)
    {
        fixed (float* px = x, py = y)
        {
            var job = t_multiVec ??= new MultiVecJob();
            if (IntDot.Supports(type))
            {
                // The same quantization as MatVec, row by row (each row has its own blocks and scales).
                var act = t_act ??= new QuantizedActivations();
                ActivationQuant.Quantize(type, px, cols, n, act, vector: isa != IntDot.Isa.Scalar);
                job.SetInt(type, isa, act);
            }
            else if (FloatDot.Supports(type)) job.SetFloat(type, fisa);
            else job.SetFallback(type);
            int chunk = DecodeRowsPerChunk(rows);
            job.Set(w, rowBytes, rows, cols, px, py, n, chunk);
            WorkerPool.Shared.Run(job, (rows + chunk - 1) / chunk);
        }
    }


    private sealed class MultiVecJob : IParallelJob
    {
        private enum Kind { Int, Float, Fallback }
        private Kind _kind;
        private GgmlType _type;
        private IntDot.Isa _isa;
        private FloatDot.Isa _fisa;
        private QuantizedActivations? _act;
        private byte* _w;
        private long _rowBytes;
        private int _rows, _cols, _n, _chunk;
        private float* _x, _y;

        public void SetInt(GgmlType type, IntDot.Isa isa, QuantizedActivations act) { _kind = Kind.Int; _type = type; _isa = isa; _act = act; }
        public void SetFloat(GgmlType type, FloatDot.Isa isa) { _kind = Kind.Float; _type = type; _fisa = isa; }
        public void SetFallback(GgmlType type) { _kind = Kind.Fallback; _type = type; }

        public void Set(byte* w, long rowBytes, int rows, int cols, float* x, float* y, int n, int chunk)
        {
            _w = w; _rowBytes = rowBytes; _rows = rows; _cols = cols; _x = x; _y = y; _n = n; _chunk = chunk;
        }

        public void Execute(int chunk)
        {
            int r0 = chunk * _chunk, nr = Math.Min(_rows, r0 + _chunk) - r0;
            byte* w = _w + r0 * _rowBytes;
            // Each token's sums exactly as the one-row kernels compute them, weights unpacked once for several tokens.
            switch (_kind)
            {
                case Kind.Int:
                    IntDot.MultiRows(_type, _isa, w, _rowBytes, nr, _act!, _n, _cols, _y + r0, _rows);
                    return;
                case Kind.Float:
                    FloatDot.MultiRows(_type, _fisa, w, _rowBytes, nr, _x, _cols, _n, _y + r0, _rows);
                    return;
            }
            int bytes = (int)GgmlTypes.RowBytes(_type, _cols);
            for (int t = 0; t < _n; t++)
            {
                float* y = _y + (long)t * _rows + r0;
                var xs = new ReadOnlySpan<float>(_x + (long)t * _cols, _cols);
                for (int r = 0; r < nr; r++) y[r] = QuantDot.Dot(_type, new ReadOnlySpan<byte>(w + r * _rowBytes, bytes), xs);
            }
        }
    }

    private sealed class MatVecJob : IParallelJob
    {
        private delegate*<byte*, long, int, in ActRow, int, float*, void> _int;
        private delegate*<byte*, long, int, float*, int, float*, void> _float;
        private ActRow _act;
        private GgmlType _fallback;
        private byte* _w;
        private long _rowBytes;
        private int _rows, _cols, _chunk;
        private float* _x, _y;

        public void SetInt(delegate*<byte*, long, int, in ActRow, int, float*, void> k, ActRow act) { _int = k; _float = null; _act = act; }
        public void SetFloat(delegate*<byte*, long, int, float*, int, float*, void> k) { _float = k; _int = null; }
        public void SetFallback(GgmlType type) { _fallback = type; _int = null; _float = null; }

        public void Set(byte* w, long rowBytes, int rows, int cols, float* x, float* y, int chunk)
        {
            _w = w; _rowBytes = rowBytes; _rows = rows; _cols = cols; _x = x; _y = y; _chunk = chunk;
        }

        public void Execute(int chunk)
        {
            int r0 = chunk * _chunk, nr = Math.Min(_rows, r0 + _chunk) - r0;
            byte* w = _w + r0 * _rowBytes;
            if (_int != null) _int(w, _rowBytes, nr, in _act, _cols, _y + r0);
            else if (_float != null) _float(w, _rowBytes, nr, _x, _cols, _y + r0);
            else
            {
                var xs = new ReadOnlySpan<float>(_x, _cols);
                int bytes = (int)GgmlTypes.RowBytes(_fallback, _cols);
                for (int r = 0; r < nr; r++) _y[r0 + r] = QuantDot.Dot(_fallback, new ReadOnlySpan<byte>(w + r * _rowBytes, bytes), xs);
            }
        }
    }

    /// <summary>Integer prefill: each chunk of rows is decoded once, then multiplied with every token.</summary>
    private sealed class IntGemmJob : IParallelJob
    {
        [ThreadStatic] private static IntGemm.PackedWeights? t_weights;
        private GgmlType _type;
        private byte* _w;
        private long _rowBytes;
        private int _rows, _cols, _n;
        private IntGemm.PackedActivations? _act;
        private float* _y;
        private IntDot.Isa _isa;
        private bool _mins;

        public void Set(GgmlType type, byte* w, long rowBytes, int rows, int cols, IntGemm.PackedActivations act, float* y, int n, IntDot.Isa isa)
        {
            _type = type; _w = w; _rowBytes = rowBytes; _rows = rows; _cols = cols; _act = act; _y = y; _n = n; _isa = isa;
            _mins = IntGemm.HasMins(type);
        }

        public void Execute(int chunk)
        {
            int r0 = chunk * GemmRowsPerChunk, nr = Math.Min(_rows, r0 + GemmRowsPerChunk) - r0;
            if (IntGemmDirect.Supports(_type, _isa, _n))
            {
                // Short batches of q8_0/q4_0 read in place (no packing): the same results, bit for bit.
                for (int t0 = 0; t0 < _n; t0 += TokenBlock)
                    IntGemmDirect.Tile(_type, _w + r0 * _rowBytes, _rowBytes, nr, _act!, t0 / IntGemm.G, Math.Min(TokenBlock, _n - t0), _y + (long)t0 * _rows + r0, _rows);
                return;
            }
            var pw = t_weights ??= new IntGemm.PackedWeights();
            IntGemm.PackWeights(_type, _w + r0 * _rowBytes, _rowBytes, nr, _cols, pw, vector: true);
            for (int t0 = 0; t0 < _n; t0 += TokenBlock)
                IntGemm.Tile(pw, _act!, t0 / IntGemm.G, Math.Min(TokenBlock, _n - t0), _mins, _y + (long)t0 * _rows + r0, _rows, _isa);
        }
    }

    /// <summary>Quantizes and packs the tokens for <see cref="IntGemm"/>, one group of <see cref="IntGemm.G"/> per item.</summary>
    private sealed class QuantizePackJob : IParallelJob
    {
        private ActFormat _format;
        private float* _x;
        private int _cols;
        private QuantizedActivations? _act;
        private IntGemm.PackedActivations? _packed;

        public void Set(ActFormat format, float* x, int cols, QuantizedActivations act, IntGemm.PackedActivations packed)
        {
            _format = format; _x = x; _cols = cols; _act = act; _packed = packed;
        }

        public void Execute(int g)
        {
            int t0 = g * IntGemm.G, t1 = Math.Min(_act!.Count, t0 + IntGemm.G);
            ActivationQuant.QuantizeRows(_format, _x, _cols, t0, t1, _act);
            IntGemm.PackGroup(_act, _packed!, g);
        }
    }

    /// <summary>Packs the tokens for <see cref="FloatGemm"/>, one group of 16 per item.</summary>
    private sealed class PackXJob : IParallelJob
    {
        private float* _x, _xp;
        private int _n, _k;
        public void Set(float* x, int n, int k, float* xp) { _x = x; _n = n; _k = k; _xp = xp; }
        public void Execute(int g) => FloatGemm.PackGroup(_x, _n, _k, _xp, g);
    }

    /// <summary>Float prefill with AVX-512: each chunk of rows is converted to float once, then the outer-product tile.</summary>
    private sealed class FloatGemmJob : IParallelJob
    {
        [ThreadStatic] private static float[]? t_tile;
        [ThreadStatic] private static float[]? t_acc;
        private GgmlType _type;
        private byte* _w;
        private long _rowBytes;
        private int _rows, _cols, _n;
        private float* _xp, _y;

        public void Set(GgmlType type, byte* w, long rowBytes, int rows, int cols, float* xp, float* y, int n)
        {
            _type = type; _w = w; _rowBytes = rowBytes; _rows = rows; _cols = cols; _xp = xp; _y = y; _n = n;
        }

        public void Execute(int chunk)
        {
            int r0 = chunk * FloatRowsPerChunk, nr = Math.Min(_rows, r0 + FloatRowsPerChunk) - r0;
            int padded = (nr + FloatGemm.R - 1) / FloatGemm.R * FloatGemm.R;
            int stride = FloatGemm.RowStride(_cols);
            long tileLen = (long)padded * stride, accLen = (long)padded * ((_n + FloatGemm.T - 1) / FloatGemm.T * FloatGemm.T);
            var tile = t_tile is { } b && b.Length >= tileLen ? b : t_tile = new float[tileLen];
            var acc = t_acc is { } a && a.Length >= accLen ? a : t_acc = new float[accLen];
            fixed (float* tp = tile, ap = acc)
            {
                for (int r = 0; r < nr; r++)
                    FloatDot.ToFloat(_type, _w + (r0 + r) * _rowBytes, tp + (long)r * stride, _cols, FloatDot.Isa.Vector512);
                new Span<float>(tp + (long)nr * stride, (padded - nr) * stride).Clear();
                FloatGemm.Tile(tp, nr, padded, _xp, _n, _cols, _y + r0, _rows, ap);
            }
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
        private FloatDot.Isa _fisa;

        public void Set(GgmlType type, byte* w, long rowBytes, int rows, int cols, float* x, float* y, int n, FloatDot.Isa fisa)
        {
            _type = type; _w = w; _rowBytes = rowBytes; _rows = rows; _cols = cols; _x = x; _y = y; _n = n;
            _fisa = fisa;
            _isa = fisa switch
            {
                FloatDot.Isa.Scalar => Gemm.Isa.Scalar,
                FloatDot.Isa.Vector256 => Gemm.Isa.Vector256,
                _ => Gemm.Best,
            };
        }

        public void Execute(int chunk)
        {
            // Convert this chunk's rows once into a float tile, then multiply it with every token.
            int r0 = chunk * RowsPerChunk, r1 = Math.Min(_rows, r0 + RowsPerChunk);
            int tileLen = RowsPerChunk * _cols;
            var tile = t_tile is { } b && b.Length >= tileLen ? b : t_tile = new float[tileLen];
            fixed (float* tp = tile)
            {
                for (int r = r0; r < r1; r++)
                {
                    if (FloatDot.Supports(_type)) FloatDot.ToFloat(_type, _w + r * _rowBytes, tp + (long)(r - r0) * _cols, _cols, _fisa);
                    else Dequantize.Row(_type, new ReadOnlySpan<byte>(_w + r * _rowBytes, (int)GgmlTypes.RowBytes(_type, _cols)), new Span<float>(tp + (long)(r - r0) * _cols, _cols));
                }
                // Tokens in blocks that keep the tile and a block of activations in cache.
                const int FloatTokenBlock = 64;
                for (int t0 = 0; t0 < _n; t0 += FloatTokenBlock)
                    Gemm.Tile(tp, r1 - r0, _x + (long)t0 * _cols, Math.Min(FloatTokenBlock, _n - t0), _cols, _y + (long)t0 * _rows + r0, _rows, _isa);
            }
        }
    }
}
