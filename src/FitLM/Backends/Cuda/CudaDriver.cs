using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace FitLM.Backends.Cuda;

/// <summary>
/// The CUDA driver API (libcuda.so.1), blittable signatures only: handles are <c>nint</c>, device pointers
/// <c>ulong</c> (CUdeviceptr), sizes <c>nuint</c>, results <c>int</c> (CUresult). Call
/// <see cref="CudaLibraries.LoadDriver"/> first, and wrap every call in <see cref="Check"/>. The versioned entry
/// points (_v2) are the ones cuda.h maps the plain names to; driver 525+ exports all of them.
/// </summary>
internal static unsafe partial class CudaDriver
{
    public const int AttrMultiprocessorCount = 16;
    public const int AttrMemoryClockRate = 36;     // kHz
    public const int AttrGlobalMemoryBusWidth = 37; // bits
    public const int AttrComputeCapabilityMajor = 75;
    public const int AttrComputeCapabilityMinor = 76;
    public const int ErrorNoDevice = 100;
    /// <summary>CU_STREAM_CAPTURE_MODE_RELAXED: capture does not forbid other threads' unsafe calls (FitLM runs a device from one thread).</summary>
    public const int CaptureModeRelaxed = 2;
    /// <summary>CU_STREAM_NON_BLOCKING: the stream does not synchronize with the legacy default stream.</summary>
    public const uint StreamNonBlocking = 1;
    /// <summary>CU_EVENT_DISABLE_TIMING: an event only for ordering (cheaper to record and wait on).</summary>
    public const uint EventDisableTiming = 2;

    [LibraryImport(CudaLibraries.Driver)] public static partial int cuInit(uint flags);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuDeviceGetCount(int* count);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuDeviceGet(int* device, int ordinal);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuDeviceGetName(byte* name, int length, int device);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuDeviceGetAttribute(int* value, int attribute, int device);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuDeviceTotalMem_v2(nuint* bytes, int device);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuDevicePrimaryCtxRetain(nint* context, int device);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuDevicePrimaryCtxRelease_v2(int device);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuCtxSetCurrent(nint context);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuMemGetInfo_v2(nuint* free, nuint* total);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuMemAlloc_v2(ulong* pointer, nuint bytes);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuMemFree_v2(ulong pointer);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuMemcpyHtoD_v2(ulong dst, void* src, nuint bytes);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuMemcpyDtoH_v2(void* dst, ulong src, nuint bytes);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuMemcpyHtoDAsync_v2(ulong dst, void* src, nuint bytes, nint stream);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuMemcpyDtoHAsync_v2(void* dst, ulong src, nuint bytes, nint stream);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuMemcpyDtoD_v2(ulong dst, ulong src, nuint bytes);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuMemHostAlloc(void** pointer, nuint bytes, uint flags);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuMemFreeHost(void* pointer);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuStreamCreate(nint* stream, uint flags);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuStreamDestroy_v2(nint stream);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuStreamSynchronize(nint stream);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuEventCreate(nint* e, uint flags);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuEventRecord(nint e, nint stream);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuEventSynchronize(nint e);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuEventElapsedTime(float* milliseconds, nint start, nint end);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuEventDestroy_v2(nint e);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuModuleLoadData(nint* module, void* image);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuModuleGetFunction(nint* function, nint module, byte* name);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuModuleUnload(nint module);
    [LibraryImport(CudaLibraries.Driver)]
    public static partial int cuLaunchKernel(nint function, uint gridX, uint gridY, uint gridZ, uint blockX, uint blockY, uint blockZ,
        uint sharedBytes, nint stream, void** parameters, void** extra);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuLaunchKernelEx(LaunchConfig* config, nint function, void** parameters, void** extra);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuStreamBeginCapture_v2(nint stream, int mode);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuStreamEndCapture(nint stream, nint* graph);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuGraphInstantiateWithFlags(nint* exec, nint graph, ulong flags);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuGraphLaunch(nint exec, nint stream);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuGraphExecDestroy(nint exec);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuGraphDestroy(nint graph);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuStreamWaitEvent(nint stream, nint e, uint flags);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuGetErrorName(int result, byte** name);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuGetErrorString(int result, byte** text);

    /// <summary>CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION: the kernel may start before the previous one in the stream completes.</summary>
    public const int LaunchAttributeProgrammaticStreamSerialization = 6;

    /// <summary>CUlaunchConfig (cuda.h): the grid, block, shared memory and stream of a launch, and its attributes.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct LaunchConfig
    {
        public uint GridX, GridY, GridZ, BlockX, BlockY, BlockZ, SharedBytes;
        public nint Stream;
        public LaunchAttribute* Attributes;
        public uint AttributeCount;
    }

    /// <summary>CUlaunchAttribute: an id (4 bytes, padded to 8) and a 64-byte union of values, of which these launches use the first int.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 72)]
    public struct LaunchAttribute
    {
        [FieldOffset(0)] public int Id;
        [FieldOffset(8)] public int Value;
    }

    /// <summary>Throws a <see cref="FitLMException"/> naming the call and CUDA's error name and text when <paramref name="result"/> is not CUDA_SUCCESS.</summary>
    public static void Check(int result, [CallerArgumentExpression(nameof(result))] string call = "")
    {
        if (result != 0) throw new FitLMException($"CUDA {CallName(call)} failed: {Describe(result)}");
    }

    /// <summary>"CUDA_ERROR_OUT_OF_MEMORY (out of memory)", or the number when the driver has no name for it.</summary>
    public static string Describe(int result)
    {
        byte* name = null, text = null;
        string n = cuGetErrorName(result, &name) == 0 && name != null ? Marshal.PtrToStringUTF8((nint)name)! : $"CUresult {result}";
        string t = cuGetErrorString(result, &text) == 0 && text != null ? Marshal.PtrToStringUTF8((nint)text)! : "no description";
        return $"{n} ({t})";
    }

    /// <summary>"cuMemAlloc_v2" from "CudaDriver.cuMemAlloc_v2(&amp;p, n)".</summary>
    internal static string CallName(string expression)
    {
        int paren = expression.IndexOf('(', StringComparison.Ordinal);
        string head = paren < 0 ? expression : expression[..paren];
        int dot = head.LastIndexOf('.');
        return dot < 0 ? head.Trim() : head[(dot + 1)..].Trim();
    }
}
