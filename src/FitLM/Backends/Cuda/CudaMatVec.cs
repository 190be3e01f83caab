using FitLM.Tensors;

namespace FitLM.Backends.Cuda;

/// <summary>
/// The decode matrix-vector product on a CUDA device: y[r] = dot(W[r], x) with W in its GGUF block layout as
/// uploaded from the file's bytes (Kernels/matvec.cu), compiled through <see cref="KernelCache"/> on first use.
/// </summary>
internal sealed unsafe class CudaMatVec
{
    /// <summary>Rows per thread block (one warp each): WARPS in matvec.cu.</summary>
    private const int Warps = 8;

    private readonly CudaDevice _device;
    private readonly Dictionary<GgmlType, nint> _functions = [];

    public static readonly GgmlType[] Types =
        [GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q4_0, GgmlType.Q8_0, GgmlType.Q4_K, GgmlType.Q6_K];

    public static bool Supports(GgmlType type) => Array.IndexOf(Types, type) >= 0;

    public CudaMatVec(CudaDevice device, Action<string>? log = null)
    {
        _device = device;
        string source = Source();
        string arch = device.Arch;
        var options = Nvrtc.Options(arch);
        var cache = new KernelCache(KernelCache.DefaultDirectory(), (s, o) => Nvrtc.Compile(s, "matvec.cu", o));
        byte[] cubin = cache.GetOrCompile(source, options, Nvrtc.Version(), arch, log);
        nint module = device.LoadModule(cubin);
        foreach (var t in Types) _functions[t] = CudaDevice.Function(module, "matvec_" + GgmlTypes.Name(t).ToLowerInvariant());
    }

    /// <summary>
    /// The kernel source, embedded in the assembly; FITLM_CUDA_SOURCE=FILE reads it from a file instead (kernel
    /// work on a GPU machine without republishing; the cache key follows the text, so nothing stale is loaded).
    /// </summary>
    public static string Source()
    {
        if (Environment.GetEnvironmentVariable("FITLM_CUDA_SOURCE") is { Length: > 0 } file) return File.ReadAllText(file);
        using var s = typeof(CudaMatVec).Assembly.GetManifestResourceStream("FitLM.Backends.Cuda.Kernels.matvec.cu")
            ?? throw new FitLMException("the CUDA kernel source is missing from the assembly");
        using var r = new StreamReader(s);
        return r.ReadToEnd();
    }

    /// <summary>Queues y = W·x on the device's stream: W rows of <paramref name="rowBytes"/> bytes, x cols floats, y rows floats.</summary>
    public void Run(GgmlType type, DeviceBuffer w, long rowBytes, int rows, int cols, DeviceBuffer x, DeviceBuffer y)
    {
        if (!_functions.TryGetValue(type, out nint f)) throw new FitLMException($"cuda matvec: unsupported tensor type {type}");
        if (cols % GgmlTypes.BlockSize(type) != 0 || rowBytes < GgmlTypes.RowBytes(type, cols))
            throw new FitLMException($"cuda matvec: a {type} row of {cols} elements does not fit {rowBytes} bytes in whole blocks");
        if (rowBytes * rows > w.Bytes || (long)cols * 4 > x.Bytes || (long)rows * 4 > y.Bytes)
            throw new ArgumentException("cuda matvec: buffers smaller than the shape");
        ulong pw = w.Pointer, px = x.Pointer, py = y.Pointer;
        long rb = rowBytes;
        int r = rows, c = cols;
        void** args = stackalloc void*[] { &pw, &rb, &r, &c, &px, &py };
        _device.Launch(f, (uint)((rows + Warps - 1) / Warps), 32 * Warps, 0, args);
    }
}
