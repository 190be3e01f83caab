using FitLM.Tensors;

namespace FitLM.Backends.Cuda;

/// <summary>
/// Matrix products on a CUDA device with W in its GGUF block layout as uploaded from the file's bytes
/// (Kernels/matvec.cu): y = W·x for one token (decode), and for up to eight at a time (prefill's batches, the
/// weights read once per eight tokens).
/// </summary>
internal sealed unsafe class CudaMatVec
{
    /// <summary>Rows per thread block (one warp each): WARPS in matvec.cu.</summary>
    private const int Warps = 8;
    /// <summary>Tokens one matmul8 launch takes.</summary>
    public const int BatchTokens = 8;

    private readonly CudaDevice _device;
    private readonly Dictionary<GgmlType, (nint One, nint Eight)> _functions = [];

    public static readonly GgmlType[] Types =
        [GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q4_0, GgmlType.Q8_0, GgmlType.Q4_K, GgmlType.Q6_K];

    public static bool Supports(GgmlType type) => Array.IndexOf(Types, type) >= 0;

    public CudaMatVec(CudaDevice device, Action<string>? log = null)
    {
        _device = device;
        var module = new KernelModule(device, "matvec.cu", log);
        foreach (var t in Types)
        {
            string name = GgmlTypes.Name(t).ToLowerInvariant();
            _functions[t] = (module.Function("matvec_" + name), module.Function("matmul8_" + name));
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
        Launch(type, w.Pointer, rowBytes, rows, cols, x.Pointer, y.Pointer, 1);
    }

    /// <summary>
    /// Queues Y[t] = W·X[t] for n tokens: X [n × cols] at <paramref name="x"/>, Y [n × rows] at <paramref name="y"/>
    /// (device addresses; the caller sized them), eight tokens per launch where the rows of X are 16-byte aligned.
    /// </summary>
    public void Multiply(GgmlType type, ulong w, long rowBytes, int rows, int cols, ulong x, ulong y, int n)
    {
        Validate(type, rowBytes, cols);
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
        var (one, eight) = _functions[type];
        long rb = rowBytes;
        int r = rows, c = cols, count = n;
        void** args = stackalloc void*[] { &pw, &rb, &r, &c, &px, &py, &count };
        _device.Launch(n == 1 ? one : eight, (uint)((rows + Warps - 1) / Warps), 32 * Warps, 0, args);
    }
}
