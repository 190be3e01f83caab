using FitLM.Tensors;

namespace FitLM.Backends.Cuda;

/// <summary>
/// Matrix products on a CUDA device (Kernels/matvec.cu): y = W·x for one token (decode), and for up to eight at a
/// time (prefill's small batches, the weights read once per eight tokens). W is in its GGUF block layout as uploaded
/// from the file's bytes (Q4_0, Q8_0 and Q6_K rearranged: <see cref="SplitLayout"/>). The quantized types multiply
/// against x quantized as the CPU quantizes it (q8_0 for Q4_0/Q8_0, q8_K for Q4_K/Q6_K), in integers: the CPU's
/// numerics, up to three matrices of one input in one launch. F32, F16 and BF16 multiply in float.
/// </summary>
internal sealed unsafe partial class CudaMatVec : IDisposable
{
    /// <summary>Rows per thread block (one warp each): WARPS in matvec.cu.</summary>
    private const int Warps = 8;
    /// <summary>Rows per thread block of the integer kernels (one warp each): SPLIT_WARPS in matvec.cu.</summary>
    private const int IntegerWarps = 4;
    /// <summary>Tokens one matmul8 launch takes.</summary>
    public const int BatchTokens = 8;

    private readonly CudaDevice _device;
    private readonly Dictionary<GgmlType, (nint One, nint Eight)> _functions = [];
    private readonly Dictionary<GgmlType, (nint One, nint Eight)> _integer = [];
    private readonly nint _quantizeQ8_0, _quantizeQ8_K;
    // Q4_0's one-token product with two rows a warp (matvec2_q4_0_q8), for matrices with at least as many rows as columns.
    private readonly nint _q4_0TwoRows;
    // FITLM_CUDA_PERSISTENT=N (a probe, off by default): the one-token Q4_0 and Q8_0 products as matvec.cu's persistent
    // loops (matvec*_loop), at most N thread blocks an SM; (one row, two rows) by type.
    private readonly int _persistentBlocks;
    private readonly Dictionary<GgmlType, (nint One, nint Two)> _loops = [];
    // x quantized for the integer kernels (BatchTokens × MaxCols): the int8 values, the blocks' scales, and q8_0's block
    // sums or q8_K's sums of each 16 (the larger: one int per 16 values).
    private readonly DeviceBuffer? _xq, _xd, _xs;
    private ulong _quantizedX;
    private bool _quantizedK;
    private int _quantizedCols, _quantizedTokens;

    /// <summary>matvec.cu as loaded: its other entry points (the prefill's dequantizers) come from here too.</summary>
    public KernelModule Module { get; }

    /// <summary>The widest x the integer kernels take: products of quantized types with wider rows throw.</summary>
    public int MaxCols { get; }

    /// <summary>
    /// Whether a product of <paramref name="type"/> quantizes x as the CPU does and multiplies in integers (its result
    /// then equals MatMul's up to the order of the float sums): every quantized type with a kernel.
    /// </summary>
    public static bool QuantizesActivations(GgmlType type) => type is GgmlType.Q4_0 or GgmlType.Q8_0 or GgmlType.Q4_K or GgmlType.Q6_K;

    /// <summary>Whether <paramref name="type"/>'s integer kernels take x in q8_K (the K-quants) rather than q8_0, as the CPU's.</summary>
    private static bool UsesQ8_K(GgmlType type) => ActivationQuant.FormatFor(type) == ActFormat.Q8_K;

    public static readonly GgmlType[] Types =
        [GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q4_0, GgmlType.Q8_0, GgmlType.Q4_K, GgmlType.Q6_K];

    public static bool Supports(GgmlType type) => Array.IndexOf(Types, type) >= 0;

    /// <param name="maxCols">The widest x a quantized type's product gets: its q8_0/q8_K scratch (eight tokens of it) is
    /// allocated now, since a decode step is captured as a graph, where nothing may be allocated.</param>
    public CudaMatVec(CudaDevice device, Action<string>? log = null, int maxCols = 0)
    {
        _device = device;
        var module = Module = new KernelModule(device, "matvec.cu", log);
        foreach (var t in Types)
        {
            string name = GgmlTypes.Name(t).ToLowerInvariant();
            if (QuantizesActivations(t)) _integer[t] = (module.Function($"matvec_{name}_q8"), module.Function($"matmul8_{name}_q8"));
            else _functions[t] = (module.Function("matvec_" + name), module.Function("matmul8_" + name));
        }
        _q4_0TwoRows = module.Function("matvec2_q4_0_q8");
        if (int.TryParse(Environment.GetEnvironmentVariable("FITLM_CUDA_PERSISTENT"), out int perSm) && perSm > 0)
        {
            _persistentBlocks = perSm * device.Multiprocessors;
            _loops[GgmlType.Q4_0] = (module.Function("matvec_q4_0_q8_loop"), module.Function("matvec2_q4_0_q8_loop"));
            _loops[GgmlType.Q8_0] = (module.Function("matvec_q8_0_q8_loop"), 0);
        }
        _quantizeQ8_0 = module.Function("quantize_q8_0");
        _quantizeQ8_K = module.Function("quantize_q8_k");
        MaxCols = (maxCols + 31) / 32 * 32;
        if (MaxCols > 0)
        {
            _xq = device.Allocate((long)BatchTokens * MaxCols);
            _xd = device.Allocate((long)BatchTokens * MaxCols / 32 * 4);
            _xs = device.Allocate((long)BatchTokens * MaxCols / 16 * 4);
            if (FoldNormEnabled) _fold = new FoldScratch(device, module, MaxCols);
            if (FusedActEnabled) _act = new ActScratch(device, module, MaxCols);
        }
    }

    /// <summary>
    /// Where to write X [n × cols] at <paramref name="x"/> in q8_0 for the product of <paramref name="consumer"/>'s
    /// type that reads it next, or null. Not null when that product quantizes x to q8_0 (Q4_0, Q8_0) in one launch (n ≤
    /// 8): the kernel that writes X then writes this too (a decode step saves a launch per product; the values are
    /// quantize_q8_0's), and the product, given sameInput, reads it instead of quantizing X again.
    /// </summary>
    public QuantizedX? FusedTarget(GgmlType consumer, ulong x, int cols, int n)
    {
        if (!QuantizesActivations(consumer) || UsesQ8_K(consumer) || n > BatchTokens || cols > MaxCols || cols % 32 != 0 || _xq == null) return null;
        _quantizedK = false;
        _quantizedX = x;
        _quantizedCols = cols;
        _quantizedTokens = n;
        return new QuantizedX(_xq.Pointer, _xd!.Pointer, _xs!.Pointer);
    }

    /// <summary>Device bytes of the quantized-x scratch for x up to <paramref name="maxCols"/> wide (eight tokens: int8 values, scales, sums).</summary>
    public static long ScratchBytes(int maxCols)
    {
        long cols = (maxCols + 31) / 32 * 32;
        return BatchTokens * (cols + cols / 32 * 4 + cols / 16 * 4) + (FoldNormEnabled ? QuantizedX.Bytes((int)cols) + cols / 32 * 4 : 0) // and the folded norm's
            + (FusedActEnabled ? QuantizedX.Bytes((int)cols) : 0); // and the fused activation's
    }

    /// <summary>The embedded kernel source (or FITLM_CUDA_SOURCE's, <see cref="KernelModule.Source"/>).</summary>
    public static string Source() => KernelModule.Source("matvec.cu");

    /// <summary>Queues y = W·x on the device's stream: W rows of <paramref name="rowBytes"/> bytes (in its device layout), x cols floats, y rows floats.</summary>
    public void Run(GgmlType type, DeviceBuffer w, long rowBytes, int rows, int cols, DeviceBuffer x, DeviceBuffer y)
    {
        Validate(type, rowBytes, cols);
        if (rowBytes * rows > w.Bytes || (long)cols * 4 > x.Bytes || (long)rows * 4 > y.Bytes)
            throw new ArgumentException("cuda matvec: buffers smaller than the shape");
        Multiply(type, w.Pointer, rowBytes, rows, cols, x.Pointer, y.Pointer, 1);
    }

    /// <summary>
    /// Queues Y[t] = W·X[t] for n tokens: X [n × cols] at <paramref name="x"/>, Y [n × rows] at <paramref name="y"/>
    /// (device addresses; the caller sized them), eight tokens per launch where the rows of X are 16-byte aligned.
    /// </summary>
    /// <param name="sameInput">x has not changed since the previous call quantized it (K and V after Q, when their
    /// types differ): its quantized form in the scratch is reused instead of quantized again.</param>
    /// <param name="input">x's q8_0 already written elsewhere by the kernel that wrote x (one token, Q4_0/Q8_0: <see cref="GateUpAct"/>).</param>
    public void Multiply(GgmlType type, ulong w, long rowBytes, int rows, int cols, ulong x, ulong y, int n, bool sameInput = false, QuantizedX? input = null)
    {
        Validate(type, rowBytes, cols);
        if (QuantizesActivations(type))
        {
            MultiplyInteger(type, cols, x, n, sameInput, (w, rows, y), default, default, input);
            return;
        }
        var (one, eight) = _functions[type];
        int step = cols % 4 == 0 ? BatchTokens : 1;
        for (int t = 0; t < n; t += step)
        {
            int count = Math.Min(step, n - t);
            LaunchFloat(count == 1 ? one : eight, w, rowBytes, rows, cols, x + (ulong)((long)t * cols * 4), y + (ulong)((long)t * rows * 4), count);
        }
    }

    private void LaunchFloat(nint function, ulong w, long rowBytes, int rows, int cols, ulong x, ulong y, int n)
    {
        void** args = stackalloc void*[] { &w, &rowBytes, &rows, &cols, &x, &y, &n };
        _device.Launch(function, (uint)((rows + Warps - 1) / Warps), 32 * Warps, 0, args);
    }

    /// <summary>
    /// Queues the products of up to three matrices of one <paramref name="type"/> with the same input X [n × cols]
    /// (Q, K and V; gate and up) as one launch per eight tokens, when the type has integer kernels; returns false
    /// (nothing queued) for the float types. A product with zero rows is absent.
    /// </summary>
    public bool MultiplyTogether(GgmlType type, int cols, ulong x, int n, (ulong W, int Rows, ulong Y) a, (ulong W, int Rows, ulong Y) b,
        (ulong W, int Rows, ulong Y) c, bool sameInput = false)
    {
        if (!QuantizesActivations(type)) return false;
        Validate(type, GgmlTypes.RowBytes(type, cols), cols);
        MultiplyInteger(type, cols, x, n, sameInput, a, b, c);
        return true;
    }

    /// <summary>
    /// <see cref="MultiplyTogether(GgmlType, int, ulong, int, ValueTuple{ulong, int, ulong}, ValueTuple{ulong, int, ulong}, ValueTuple{ulong, int, ulong}, bool)"/>
    /// for one token whose input is a folded norm's (<see cref="FoldNorm"/>): its q8_0 from there, the rows times its 1/RMS.
    /// </summary>
    public void MultiplyTogether(GgmlType type, int cols, FoldedNorm folded, (ulong W, int Rows, ulong Y) a, (ulong W, int Rows, ulong Y) b,
        (ulong W, int Rows, ulong Y) c)
    {
        Validate(type, GgmlTypes.RowBytes(type, cols), cols);
        bool twoRows = type == GgmlType.Q4_0 && a.Rows >= cols;
        var (one, two) = _fold!.Scaled[type];
        LaunchInteger(twoRows ? two : one, twoRows ? 2 : 1, cols, 1, a, b, c, folded: folded);
    }

    private static void Validate(GgmlType type, long rowBytes, int cols)
    {
        if (!Supports(type)) throw new FitLMException($"cuda matvec: unsupported tensor type {type}");
        if (cols % GgmlTypes.BlockSize(type) != 0 || rowBytes < GgmlTypes.RowBytes(type, cols))
            throw new FitLMException($"cuda matvec: a {type} row of {cols} elements does not fit {rowBytes} bytes in whole blocks");
    }

    /// <summary>Per eight tokens: X's rows quantized in the scratch, then one launch over all three matrices' rows.</summary>
    private void MultiplyInteger(GgmlType type, int cols, ulong x, int n, bool sameInput,
        (ulong W, int Rows, ulong Y) a, (ulong W, int Rows, ulong Y) b, (ulong W, int Rows, ulong Y) c, QuantizedX? input = null)
    {
        if (input != null && (n != 1 || UsesQ8_K(type))) throw new ArgumentException("cuda matvec: a q8_0 input written elsewhere is one token's");
        if (cols > MaxCols) throw new FitLMException($"cuda matvec: a {type} row of {cols} elements is wider than the {MaxCols} the activation scratch holds");
        var (one, eight) = _integer[type];
        for (int t = 0; t < n; t += BatchTokens)
        {
            int count = Math.Min(BatchTokens, n - t);
            ulong px = x + (ulong)((long)t * cols * 4);
            // Reused only for the very rows quantized last (K and V after Q): a batch's chunks each have their own address.
            if (input == null) QuantizeUnlessThere(UsesQ8_K(type), px, cols, count, sameInput);
            long shift = (long)t * 4;
            // Two rows a warp share x's loads; a matrix with fewer rows than columns (a down projection) keeps one, since
            // it then has too few warps for its long rows (matvec.cu: 4096 × 14336 took 15.4 µs against 13.4).
            bool twoRows = count == 1 && type == GgmlType.Q4_0 && a.Rows >= cols;
            var function = count > 1 ? eight : twoRows ? _q4_0TwoRows : one;
            int maxGrid = int.MaxValue;
            if (count == 1 && _loops.TryGetValue(type, out var loop))
            {
                function = twoRows ? loop.Two : loop.One;
                maxGrid = _persistentBlocks;
            }
            LaunchInteger(function, twoRows ? 2 : 1, cols, count, (a.W, a.Rows, a.Y + (ulong)(shift * a.Rows)),
                (b.W, b.Rows, b.Y + (ulong)(shift * b.Rows)), (c.W, c.Rows, c.Y + (ulong)(shift * c.Rows)), maxGrid, input: input);
        }
    }

    /// <summary>X's rows quantized into the scratch, unless <paramref name="sameInput"/> and the scratch holds them already (quantized last).</summary>
    private void QuantizeUnlessThere(bool q8K, ulong x, int cols, int tokens, bool sameInput)
    {
        if (!(sameInput && x == _quantizedX && cols == _quantizedCols && tokens == _quantizedTokens && q8K == _quantizedK)) Quantize(q8K, x, cols, tokens);
    }

    /// <summary>X's rows to q8_K (one warp per 256-block) or q8_0 (one warp per 32-block) in the scratch.</summary>
    private void Quantize(bool q8K, ulong x, int cols, int tokens)
    {
        ulong q = _xq!.Pointer, d = _xd!.Pointer, s = _xs!.Pointer;
        long blocks = (long)tokens * cols / (q8K ? 256 : 32);
        void** args = stackalloc void*[] { &x, &blocks, &q, &d, &s };
        _device.Launch(q8K ? _quantizeQ8_K : _quantizeQ8_0, (uint)((blocks * 32 + 255) / 256), 256, 0, args);
        _quantizedK = q8K;
        _quantizedX = x;
        _quantizedCols = cols;
        _quantizedTokens = tokens;
    }

    /// <param name="rowsPerWarp">R in matvec.cu's int_matmul: the function's rows a warp.</param>
    /// <param name="maxGrid">At most this many thread blocks (a persistent loop's grid).</param>
    /// <param name="folded">A folded norm's output as x (a *_scaled kernel: its q8_0, sums of squares and ε as arguments).</param>
    /// <param name="input">x's q8_0 where it is, if not in the scratch.</param>
    private void LaunchInteger(nint function, int rowsPerWarp, int cols, int n, (ulong W, int Rows, ulong Y) a, (ulong W, int Rows, ulong Y) b,
        (ulong W, int Rows, ulong Y) c, int maxGrid = int.MaxValue, FoldedNorm? folded = null, QuantizedX? input = null)
    {
        var x = folded?.Input ?? input ?? new QuantizedX(_xq!.Pointer, _xd!.Pointer, _xs!.Pointer);
        ulong q = x.Q, d = x.D, s = x.S, partials = folded?.Partials ?? 0;
        float eps = folded?.Eps ?? 0f;
        ulong w0 = a.W, w1 = b.W, w2 = c.W, y0 = a.Y, y1 = b.Y, y2 = c.Y;
        int r0 = a.Rows, r1 = b.Rows, r2 = c.Rows, perBlock = IntegerWarps * rowsPerWarp;
        uint grid = (uint)Math.Min((r0 + perBlock - 1) / perBlock + (r1 + perBlock - 1) / perBlock + (r2 + perBlock - 1) / perBlock, maxGrid);
        void** args = stackalloc void*[] { &w0, &w1, &w2, &y0, &y1, &y2, &r0, &r1, &r2, &cols, &q, &d, &s, folded != null ? &partials : &n, &eps };
        _device.Launch(function, grid, 32 * IntegerWarps, 0, args);
    }

    public void Dispose()
    {
        _fold?.Dispose();
        _act?.Dispose();
        _xq?.Dispose();
        _xd?.Dispose();
        _xs?.Dispose();
    }
}
