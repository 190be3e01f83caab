using FitLM.Tensors;

namespace FitLM.Backends.Cuda;

/// <summary>
/// Matrix products on a CUDA device with W in its GGUF block layout as uploaded from the file's bytes
/// (Kernels/matvec.cu): y = W·x for one token (decode), and for up to eight at a time (prefill's batches, the
/// weights read once per eight tokens).
/// </summary>
internal sealed unsafe class CudaMatVec : IDisposable
{
    /// <summary>Rows per thread block (one warp each): WARPS in matvec.cu.</summary>
    private const int Warps = 8;
    /// <summary>Threads per row of the integer kernels: ROW_THREADS in matvec.cu.</summary>
    private const uint RowThreads = 128;
    /// <summary>Tokens one matmul8 launch takes.</summary>
    public const int BatchTokens = 8;

    private readonly CudaDevice _device;
    private readonly Dictionary<GgmlType, (nint One, nint Eight)> _functions = [];
    private readonly Dictionary<GgmlType, nint> _integer = [];
    private readonly nint _quantize;
    // x quantized to q8_0 for the integer kernels: the int8 values, the blocks' scales and sums (MaxCols wide).
    private readonly DeviceBuffer? _xq, _xd, _xs;
    private ulong _quantizedX;
    private int _quantizedCols;
    private bool _sameInput;

    /// <summary>matvec.cu as loaded: its other entry points (the prefill's dequantizers) come from here too.</summary>
    public KernelModule Module { get; }

    /// <summary>The widest x the integer kernels take (0: none; every type multiplies in float).</summary>
    public int MaxCols { get; }

    /// <summary>
    /// Whether a one-token product of <paramref name="type"/> quantizes x to q8_0 and multiplies in integers (the CPU's
    /// numerics: its result then equals MatMul.MatVec's up to the order of the float sums).
    /// </summary>
    public bool QuantizesActivations(GgmlType type) => MaxCols > 0 && _integer.ContainsKey(type);

    public static readonly GgmlType[] Types =
        [GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q4_0, GgmlType.Q8_0, GgmlType.Q4_K, GgmlType.Q6_K];

    public static bool Supports(GgmlType type) => Array.IndexOf(Types, type) >= 0;

    /// <param name="maxCols">The widest x a one-token Q4_0/Q8_0 product gets (its q8_0 scratch is allocated now: a
    /// decode step is captured as a graph, where nothing may be allocated); 0 keeps those types in float.</param>
    public CudaMatVec(CudaDevice device, Action<string>? log = null, int maxCols = 0)
    {
        _device = device;
        var module = Module = new KernelModule(device, "matvec.cu", log);
        foreach (var t in Types)
        {
            string name = GgmlTypes.Name(t).ToLowerInvariant();
            _functions[t] = (module.Function("matvec_" + name), module.Function("matmul8_" + name));
        }
        _integer[GgmlType.Q4_0] = module.Function("matvec_q4_0_q8");
        _integer[GgmlType.Q8_0] = module.Function("matvec_q8_0_q8");
        _quantize = module.Function("quantize_q8_0");
        MaxCols = maxCols / 32 * 32;
        if (MaxCols > 0)
        {
            _xq = device.Allocate(MaxCols);
            _xd = device.Allocate(MaxCols / 32 * 4L);
            _xs = device.Allocate(MaxCols / 32 * 4L);
        }
    }

    /// <summary>The embedded kernel source (or FITLM_CUDA_SOURCE's, <see cref="KernelModule.Source"/>).</summary>
    public static string Source() => KernelModule.Source("matvec.cu");

    /// <summary>Queues y = W·x on the device's stream: W rows of <paramref name="rowBytes"/> bytes, x cols floats, y rows floats.</summary>
    public void Run(GgmlType type, DeviceBuffer w, long rowBytes, int rows, int cols, DeviceBuffer x, DeviceBuffer y)
    {
        Validate(type, rowBytes, cols);
        if (rowBytes * rows > w.Bytes || (long)cols * 4 > x.Bytes || (long)rows * 4 > y.Bytes)
            throw new ArgumentException("cuda matvec: buffers smaller than the shape");
        _sameInput = false;
        Launch(type, w.Pointer, rowBytes, rows, cols, x.Pointer, y.Pointer, 1);
    }

    /// <summary>
    /// Queues Y[t] = W·X[t] for n tokens: X [n × cols] at <paramref name="x"/>, Y [n × rows] at <paramref name="y"/>
    /// (device addresses; the caller sized them), eight tokens per launch where the rows of X are 16-byte aligned.
    /// </summary>
    /// <param name="sameInput">x has not changed since the previous call quantized it (K and V after Q, up after gate):
    /// its q8_0 form in the scratch is reused instead of quantized again.</param>
    public void Multiply(GgmlType type, ulong w, long rowBytes, int rows, int cols, ulong x, ulong y, int n, bool sameInput = false)
    {
        Validate(type, rowBytes, cols);
        _sameInput = sameInput;
        int step = cols % 4 == 0 ? BatchTokens : 1;
        for (int t = 0; t < n; t += step)
        {
            int count = Math.Min(step, n - t);
            Launch(type, w, rowBytes, rows, cols, x + (ulong)((long)t * cols * 4), y + (ulong)((long)t * rows * 4), count);
        }
    }

    private static void Validate(GgmlType type, long rowBytes, int cols)
    {
        if (!Supports(type)) throw new FitLMException($"cuda matvec: unsupported tensor type {type}");
        if (cols % GgmlTypes.BlockSize(type) != 0 || rowBytes < GgmlTypes.RowBytes(type, cols))
            throw new FitLMException($"cuda matvec: a {type} row of {cols} elements does not fit {rowBytes} bytes in whole blocks");
    }

    private void Launch(GgmlType type, ulong pw, long rowBytes, int rows, int cols, ulong px, ulong py, int n)
    {
        if (n == 1 && cols % 32 == 0 && cols <= MaxCols && _integer.TryGetValue(type, out nint integer))
        {
            LaunchInteger(integer, pw, rowBytes, rows, cols, px, py);
            return;
        }
        var (one, eight) = _functions[type];
        long rb = rowBytes;
        int r = rows, c = cols, count = n;
        void** args = stackalloc void*[] { &pw, &rb, &r, &c, &px, &py, &count };
        _device.Launch(n == 1 ? one : eight, (uint)((rows + Warps - 1) / Warps), 32 * Warps, 0, args);
    }

    /// <summary>x to q8_0 in the scratch (one warp per 32-block), then the integer kernel.</summary>
    private void LaunchInteger(nint function, ulong pw, long rowBytes, int rows, int cols, ulong px, ulong py)
    {
        long blocks = cols / 32;
        ulong q = _xq!.Pointer, d = _xd!.Pointer, s = _xs!.Pointer;
        // Reused only for the very row quantized last: a batch's rows each have their own address.
        if (!(_sameInput && px == _quantizedX && cols == _quantizedCols))
        {
            void** quantize = stackalloc void*[] { &px, &blocks, &q, &d, &s };
            _device.Launch(_quantize, (uint)((blocks * 32 + 255) / 256), 256, 0, quantize);
            _quantizedX = px;
            _quantizedCols = cols;
        }
        long rb = rowBytes;
        int r = rows, c = cols;
        void** args = stackalloc void*[] { &pw, &rb, &r, &c, &q, &d, &s, &py };
        _device.Launch(function, (uint)rows, RowThreads, 0, args); // one row per block (ROW_THREADS in matvec.cu)
    }

    public void Dispose()
    {
        _xq?.Dispose();
        _xd?.Dispose();
        _xs?.Dispose();
    }
}
