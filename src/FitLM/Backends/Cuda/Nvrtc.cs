using System.Runtime.InteropServices;
using System.Text;

namespace FitLM.Backends.Cuda;

/// <summary>
/// NVRTC, CUDA's runtime compiler: CUDA C++ source to a CUBIN for one GPU architecture, so nothing native is
/// built at install. Kernels include no headers (none are guaranteed to be installed beside the library).
/// </summary>
internal static unsafe partial class Nvrtc
{
    [LibraryImport(CudaLibraries.NvrtcName)] private static partial int nvrtcVersion(int* major, int* minor);
    [LibraryImport(CudaLibraries.NvrtcName)] private static partial byte* nvrtcGetErrorString(int result);
    [LibraryImport(CudaLibraries.NvrtcName)]
    private static partial int nvrtcCreateProgram(nint* program, byte* source, byte* name, int headers, byte** headerSources, byte** includeNames);
    [LibraryImport(CudaLibraries.NvrtcName)] private static partial int nvrtcCompileProgram(nint program, int options, byte** optionValues);
    [LibraryImport(CudaLibraries.NvrtcName)] private static partial int nvrtcGetProgramLogSize(nint program, nuint* size);
    [LibraryImport(CudaLibraries.NvrtcName)] private static partial int nvrtcGetProgramLog(nint program, byte* log);
    [LibraryImport(CudaLibraries.NvrtcName)] private static partial int nvrtcGetCUBINSize(nint program, nuint* size);
    [LibraryImport(CudaLibraries.NvrtcName)] private static partial int nvrtcGetCUBIN(nint program, byte* cubin);
    [LibraryImport(CudaLibraries.NvrtcName)] private static partial int nvrtcDestroyProgram(nint* program);

    /// <summary>"13.0": the compiler's version, part of the kernel cache's key.</summary>
    public static string Version()
    {
        CudaLibraries.LoadNvrtc();
        int major, minor;
        Check(nvrtcVersion(&major, &minor), "nvrtcVersion");
        return $"{major}.{minor}";
    }

    /// <summary>The options for the device's own architecture (sm_90 for compute capability 9.0).</summary>
    public static string[] Options(string arch) => [$"--gpu-architecture={arch}", "-default-device", "--std=c++17"];

    /// <summary>Compiles <paramref name="source"/> to a CUBIN; a compile error becomes one line with NVRTC's first error.</summary>
    public static byte[] Compile(string source, string name, IReadOnlyList<string> options)
    {
        CudaLibraries.LoadNvrtc();
        nint program;
        fixed (byte* src = Utf8Z(source), nm = Utf8Z(name))
            Check(nvrtcCreateProgram(&program, src, nm, 0, null, null), "nvrtcCreateProgram");
        try
        {
            var optionBytes = options.Select(Utf8Z).ToArray();
            var handles = optionBytes.Select(b => GCHandle.Alloc(b, GCHandleType.Pinned)).ToArray();
            int result;
            try
            {
                var pointers = stackalloc byte*[handles.Length];
                for (int i = 0; i < handles.Length; i++) pointers[i] = (byte*)handles[i].AddrOfPinnedObject();
                result = nvrtcCompileProgram(program, handles.Length, pointers);
            }
            finally
            {
                foreach (var h in handles) h.Free();
            }
            if (result != 0)
            {
                string log = Log(program);
                string first = log.Split('\n').FirstOrDefault(l => l.Contains("error", StringComparison.Ordinal)) ?? log.Split('\n')[0];
                throw new FitLMException($"NVRTC could not compile {name} ({string.Join(' ', options)}): {ErrorText(result)}: {first.Trim()}");
            }
            nuint size;
            Check(nvrtcGetCUBINSize(program, &size), "nvrtcGetCUBINSize");
            var cubin = new byte[(int)size];
            fixed (byte* p = cubin) Check(nvrtcGetCUBIN(program, p), "nvrtcGetCUBIN");
            return cubin;
        }
        finally
        {
            _ = nvrtcDestroyProgram(&program);
        }
    }

    private static string Log(nint program)
    {
        nuint size;
        if (nvrtcGetProgramLogSize(program, &size) != 0 || size <= 1) return "";
        var log = new byte[(int)size];
        fixed (byte* p = log) if (nvrtcGetProgramLog(program, p) != 0) return "";
        return Encoding.UTF8.GetString(log, 0, log.Length - 1);
    }

    /// <summary>A NUL-terminated UTF-8 copy of <paramref name="s"/>, as the C APIs take strings.</summary>
    internal static byte[] Utf8Z(string s)
    {
        var bytes = new byte[Encoding.UTF8.GetByteCount(s) + 1];
        Encoding.UTF8.GetBytes(s, bytes);
        return bytes;
    }

    private static string ErrorText(int result)
    {
        byte* text = nvrtcGetErrorString(result);
        return text == null ? $"nvrtcResult {result}" : Marshal.PtrToStringUTF8((nint)text)!;
    }

    private static void Check(int result, string call)
    {
        if (result != 0) throw new FitLMException($"NVRTC {call} failed: {ErrorText(result)}");
    }
}
