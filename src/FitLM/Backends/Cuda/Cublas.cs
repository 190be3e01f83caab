using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace FitLM.Backends.Cuda;

/// <summary>
/// The few cuBLAS calls the prefill uses (libcublas through <see cref="CudaLibraries.TryLoadCublas"/>): a handle on
/// the device's stream and cublasGemmEx, fp16 inputs with float32 accumulation and output.
/// </summary>
internal static unsafe partial class Cublas
{
    public const int OpN = 0, OpT = 1;
    public const int R32F = 0, R16F = 2;       // cudaDataType
    public const int Compute32F = 68;          // CUBLAS_COMPUTE_32F
    public const int GemmDefault = -1;         // CUBLAS_GEMM_DEFAULT

    [LibraryImport(CudaLibraries.CublasName)] public static partial int cublasCreate_v2(nint* handle);
    [LibraryImport(CudaLibraries.CublasName)] public static partial int cublasDestroy_v2(nint handle);
    [LibraryImport(CudaLibraries.CublasName)] public static partial int cublasSetStream_v2(nint handle, nint stream);
    [LibraryImport(CudaLibraries.CublasName)]
    public static partial int cublasGemmEx(nint handle, int transA, int transB, int m, int n, int k, void* alpha, ulong a, int aType, int lda,
        ulong b, int bType, int ldb, void* beta, ulong c, int cType, int ldc, int computeType, int algo);

    /// <summary>Throws a <see cref="FitLMException"/> naming the call when <paramref name="status"/> is not CUBLAS_STATUS_SUCCESS.</summary>
    public static void Check(int status, [CallerArgumentExpression(nameof(status))] string call = "")
    {
        if (status != 0) throw new FitLMException($"cuBLAS {CudaDriver.CallName(call)} failed: status {status}");
    }
}
