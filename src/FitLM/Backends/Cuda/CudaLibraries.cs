using System.Reflection;
using System.Runtime.InteropServices;

namespace FitLM.Backends.Cuda;

/// <summary>
/// Finds and loads libcuda and NVRTC for the P/Invokes of <see cref="CudaDriver"/> and <see cref="Nvrtc"/>. Their
/// LibraryImports name <see cref="Driver"/> and <see cref="NvrtcName"/>, which this resolver maps to the handles
/// loaded here; every other library name falls through to the runtime's own probing. Loading is explicit (the
/// callers call <see cref="LoadDriver"/> / <see cref="LoadNvrtc"/> first), so a machine without the libraries gets
/// a <see cref="FitLMException"/> with one line to act on, never a DllNotFoundException from a first call.
/// The resolver is the assembly's only one (.NET allows one per assembly).
/// </summary>
internal static class CudaLibraries
{
    public const string Driver = "fitlm-libcuda";
    public const string NvrtcName = "fitlm-libnvrtc";
    public const string CublasName = "fitlm-libcublas";

    private static readonly Lock s_lock = new();
    private static bool s_registered;
    private static nint s_driver, s_nvrtc, s_cublas;
    private static string? s_nvrtcPath;

    /// <summary>The sentence a machine without the driver gets.</summary>
    public const string NoDriver = "no CUDA driver: libcuda.so.1 not found (install the NVIDIA driver; everything else in FitLM runs on the CPU)";

    public static void LoadDriver()
    {
        lock (s_lock)
        {
            if (s_driver != 0) return;
            if (!NativeLibrary.TryLoad("libcuda.so.1", out s_driver) && !NativeLibrary.TryLoad("libcuda.so", out s_driver))
                throw new FitLMException(NoDriver);
            Register();
        }
    }

    /// <summary>Loads NVRTC (the first of <see cref="NvrtcCandidates"/> that loads) and returns its path.</summary>
    public static string LoadNvrtc()
    {
        lock (s_lock)
        {
            if (s_nvrtc != 0) return s_nvrtcPath!;
            foreach (string candidate in NvrtcCandidates())
            {
                if (!NativeLibrary.TryLoad(candidate, out s_nvrtc)) continue;
                s_nvrtcPath = candidate;
                Register();
                return candidate;
            }
            throw new FitLMException("no NVRTC: libnvrtc.so.13/.12 not found on the library path, under $CUDA_HOME, $CUDA_PATH, " +
                "/usr/local/cuda or a Python nvidia-cuda-nvrtc package (install the CUDA toolkit's NVRTC)");
        }
    }

    /// <summary>
    /// Loads cuBLAS (the first of its candidates that loads, as NVRTC's); false where there is none: the prefill then
    /// multiplies with FitLM's own kernels.
    /// </summary>
    public static bool TryLoadCublas()
    {
        lock (s_lock)
        {
            if (s_cublas != 0) return true;
            foreach (string candidate in Candidates(["libcublas.so.13", "libcublas.so.12", "libcublas.so"], "cublas"))
            {
                if (!NativeLibrary.TryLoad(candidate, out s_cublas)) continue;
                Register();
                return true;
            }
            return false;
        }
    }

    /// <summary>Where NVRTC is looked for, in order: the loader's own search, then the usual toolkit and pip folders.</summary>
    public static IEnumerable<string> NvrtcCandidates() => Candidates(["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"], "cuda_nvrtc");

    /// <summary><paramref name="names"/> for the loader's own search, then in the toolkit folders and pip's nvidia/<paramref name="pipPackage"/>/lib and nvidia/cu13/lib.</summary>
    private static IEnumerable<string> Candidates(string[] names, string pipPackage)
    {
        foreach (string n in names) yield return n;
        var dirs = new List<string>();
        foreach (string v in new[] { "CUDA_HOME", "CUDA_PATH" })
            if (Environment.GetEnvironmentVariable(v) is { Length: > 0 } root) dirs.Add(Path.Combine(root, "lib64"));
        dirs.Add("/usr/local/cuda/lib64");
        dirs.Add("/usr/local/cuda/targets/x86_64-linux/lib");
        foreach (string parent in new[] { "/usr/lib", "/usr/local/lib" })
        {
            if (!Directory.Exists(parent)) continue;
            foreach (string python in SafeDirectories(parent, "python3*"))
                foreach (string packages in SafeDirectories(python, "*-packages"))
                {
                    dirs.Add(Path.Combine(packages, "nvidia", pipPackage, "lib"));
                    dirs.Add(Path.Combine(packages, "nvidia", "cu13", "lib"));
                }
        }
        foreach (string dir in dirs)
            foreach (string n in names)
            {
                string path = Path.Combine(dir, n);
                if (File.Exists(path)) yield return path;
            }
    }

    private static string[] SafeDirectories(string parent, string pattern)
    {
        try { return Directory.GetDirectories(parent, pattern); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return []; }
    }

    private static void Register()
    {
        if (s_registered) return;
        NativeLibrary.SetDllImportResolver(typeof(CudaLibraries).Assembly, Resolve);
        s_registered = true;
    }

    private static nint Resolve(string name, Assembly assembly, DllImportSearchPath? searchPath) => name switch
    {
        Driver => s_driver,
        NvrtcName => s_nvrtc,
        CublasName => s_cublas,
        _ => 0,
    };
}
