using FitLM.Tensors;

namespace FitLM.Backends.Cuda;

/// <summary>
/// The prefill's matrix products on tensor cores: W is decoded to fp16 by Kernels/matvec.cu's dequant_f16_* (a slice
/// of rows at a time, into a fixed scratch), X rounded to fp16, and cuBLAS multiplies them with float32 accumulation
/// (llama.cpp's CUDA prefill does the same for batches past a few tokens). For a batch of n tokens the weights are
/// read once, where the matvec kernels read them once per 8 tokens; and the arithmetic runs on tensor cores instead of
/// float32 FMAs. Used for the quantized types and F16 (float32 and bf16 weights keep the exact kernels: rounding them
/// to fp16 would move the logits of float models more than the GPU test run allows).
/// </summary>
internal sealed unsafe class CudaGemm : IDisposable
{
    /// <summary>Fewer tokens than this multiply with the matvec kernels (decode, small batches).</summary>
    public const int MinTokens = 32;
    /// <summary>The fp16 scratch for a slice of W's rows: 64 MiB (llama-7b's 32000-row output head goes in 3 slices).</summary>
    public const long WeightScratchBytes = 64L << 20;
    private const int Warps = 8;

    private readonly CudaDevice _device;
    private readonly Dictionary<GgmlType, nint> _dequant = [];
    private readonly nint _toF16;
    private readonly DeviceBuffer _w, _x;
    private nint _handle;

    /// <summary>The scratch for X: <paramref name="maxTokens"/> rows of the widest input.</summary>
    public static long ActivationScratchBytes(int maxTokens, int maxCols) => 2L * maxTokens * maxCols;

    /// <summary>
    /// Whether a matrix stored on the device as <paramref name="deviceType"/>, from a file's <paramref name="sourceType"/>,
    /// multiplies here: quantized and F16 weights (and quantized ones the upload dequantized to float32), not float32 or
    /// bf16 weights of float models.
    /// </summary>
    public static bool Supports(GgmlType deviceType, GgmlType sourceType) =>
        CudaMatVec.Supports(deviceType) && (deviceType is not (GgmlType.F32 or GgmlType.BF16) || IsQuantized(sourceType));

    private static bool IsQuantized(GgmlType t) => t is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16);

    /// <summary>
    /// cuBLAS on <paramref name="device"/>'s stream, with the dequantizers of <paramref name="matvec"/>'s module (matvec.cu,
    /// loaded once), or null where cuBLAS cannot be loaded or started (one line on stderr says so).
    /// </summary>
    public static CudaGemm? TryCreate(CudaDevice device, KernelModule matvec, int maxTokens, int maxCols, Action<string>? log)
    {
        if (Environment.GetEnvironmentVariable("FITLM_CUDA_BLAS") == "0") return null;
        if (!CudaLibraries.TryLoadCublas())
        {
            log?.Invoke("cuBLAS not found (libcublas.so.13/.12): prefill multiplies with FitLM's own kernels");
            return null;
        }
        try { return new CudaGemm(device, matvec, maxTokens, maxCols); }
        catch (FitLMException e)
        {
            log?.Invoke($"cuBLAS did not start ({e.Message}): prefill multiplies with FitLM's own kernels");
            return null;
        }
    }

    private CudaGemm(CudaDevice device, KernelModule module, int maxTokens, int maxCols)
    {
        _device = device;
        foreach (var t in CudaMatVec.Types.Where(t => t != GgmlType.BF16))
            _dequant[t] = module.Function("dequant_f16_" + GgmlTypes.Name(t).ToLowerInvariant());
        _toF16 = module.Function("quantize_to_f16");
        nint h;
        Cublas.Check(Cublas.cublasCreate_v2(&h));
        _handle = h;
        try
        {
            Cublas.Check(Cublas.cublasSetStream_v2(_handle, device.Stream));
            _w = device.Allocate(WeightScratchBytes);
            _x = device.Allocate(ActivationScratchBytes(maxTokens, maxCols));
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>
    /// Queues Y [n × rows] = X [n × cols] · Wᵀ, W at <paramref name="w"/> in its device layout <paramref name="type"/>; X is
    /// first quantized as the CPU quantizes activations for the file's <paramref name="sourceType"/> (q8_0, q8_K, or
    /// not at all), so the prefill's perplexity follows the CPU's.
    /// </summary>
    public void Multiply(GgmlType type, GgmlType sourceType, ulong w, long rowBytes, int rows, int cols, ulong x, ulong y, int n)
    {
        long total = (long)n * cols;
        ulong px = x, pxh = _x.Pointer;
        int format = ActivationQuant.FormatFor(sourceType) switch
        {
            ActFormat.Q8_0 or ActFormat.Q8_1 => 1,
            ActFormat.Q8_K => 2,
            _ => 0,
        };
        long threads = format switch { 1 => total, 2 => total / 256 * 32, _ => total }; // formats 1, 2: a warp per block
        void** conv = stackalloc void*[] { &px, &pxh, &total, &format };
        _device.Launch(_toF16, (uint)((threads + 255) / 256), 256, 0, conv);
        var dequant = _dequant[type];
        int sliceRows = (int)Math.Min(rows, WeightScratchBytes / (2L * cols));
        float alpha = 1f, beta = 0f;
        for (int r0 = 0; r0 < rows; r0 += sliceRows)
        {
            int m = Math.Min(sliceRows, rows - r0);
            if (SplitLayout.Applies(type)) DequantizeSplit(dequant, w, rows, cols, r0, m);
            else Dequantize(dequant, w + (ulong)(r0 * rowBytes), rowBytes, m, cols);
            // Column-major view: W's slice is [cols × m] (Wᵀ with OpT), X is [cols × n], Y is [rows × n] with ldc = rows;
            // this slice writes Y's rows r0..r0+m of every column.
            Cublas.Check(Cublas.cublasGemmEx(_handle, Cublas.OpT, Cublas.OpN, m, n, cols, &alpha, _w.Pointer, Cublas.R16F, cols,
                _x.Pointer, Cublas.R16F, cols, &beta, y + (ulong)(r0 * 4L), Cublas.R32F, rows, Cublas.Compute32F, Cublas.GemmDefault));
        }
    }

    /// <summary>m rows of W from <paramref name="w"/> (GGUF block layout) to fp16 in the scratch: one warp per row.</summary>
    private void Dequantize(nint function, ulong w, long rowBytes, int m, int cols)
    {
        ulong out16 = _w.Pointer;
        void** args = stackalloc void*[] { &w, &rowBytes, &m, &cols, &out16 };
        _device.Launch(function, (uint)((m + Warps - 1) / Warps), 32 * Warps, 0, args);
    }

    /// <summary>Rows [r0, r0 + m) of a split Q4_0/Q8_0/Q6_K matrix (<see cref="SplitLayout"/>) to fp16 in the scratch: one thread per 32 weights.</summary>
    private void DequantizeSplit(nint function, ulong w, int rows, int cols, int r0, int m)
    {
        ulong out16 = _w.Pointer;
        long blocks = (long)m * (cols / 32);
        void** args = stackalloc void*[] { &w, &rows, &cols, &r0, &m, &out16 };
        _device.Launch(function, (uint)((blocks + 255) / 256), 256, 0, args);
    }

    public void Dispose()
    {
        if (_handle != 0) _ = Cublas.cublasDestroy_v2(_handle);
        _handle = 0;
        _w?.Dispose();
        _x?.Dispose();
    }
}
