using System.Reflection;
using System.Runtime.InteropServices;

namespace FitLM.Backends.Cuda;

/// <summary>
/// Finds and loads libcuda and NVRTC for the P/Invokes of <see cref="CudaDriver"/> and <see cref="Nvrtc"/>. Their
/// LibraryImports name <see cref="Driver"/> and <see cref="NvrtcName"/>, which this resolver maps to the handles
/// loaded here; every other library name falls through to the runtime's own probing. Loading is explicit (the
/// callers call <see cref="LoadDriver"/> / <see cref="LoadNvrtc"/> first), so a machine without the libraries gets
/// a <see cref="FitLMException"/> with one line to act on, never a DllNotFoundException from a first call.
/// The resolver is the assembly's only one (.NET allows one per assembly). Names are Linux's or Windows' (nvcuda.dll,
/// the toolkit's nvrtc64_*/cublas64_* DLLs under %CUDA_PATH%\bin); the calls are the same on both.
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

    private static readonly bool s_windows = OperatingSystem.IsWindows();

    /// <summary>The driver's library names, in the order they are tried.</summary>
    internal static string[] DriverNames(bool windows) => windows ? ["nvcuda.dll"] : ["libcuda.so.1", "libcuda.so"];

    /// <summary>NVRTC's names: CUDA 13's, then 12's (the kernels need 12 or later).</summary>
    internal static string[] NvrtcNames(bool windows) =>
        windows ? ["nvrtc64_130_0.dll", "nvrtc64_120_0.dll"] : ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];

    internal static string[] CublasNames(bool windows) =>
        windows ? ["cublas64_13.dll", "cublas64_12.dll"] : ["libcublas.so.13", "libcublas.so.12", "libcublas.so"];

    /// <summary>The sentence a machine without the driver gets.</summary>
    public static string NoDriver =>
        $"no CUDA driver: {DriverNames(s_windows)[0]} not found (install the NVIDIA driver; everything else in FitLM runs on the CPU)";

    public static void LoadDriver()
    {
        lock (s_lock)
        {
            if (s_driver != 0) return;
            foreach (string name in DriverNames(s_windows))
                if (NativeLibrary.TryLoad(name, out s_driver))
                {
                    Register();
                    return;
                }
            throw new FitLMException(NoDriver);
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
            throw new FitLMException(s_windows
                ? $"no NVRTC: {string.Join("/", NvrtcNames(windows: true))} not found on PATH or under %CUDA_PATH%\\bin (install the CUDA toolkit)"
                : "no NVRTC: libnvrtc.so.13/.12 not found on the library path, under $CUDA_HOME, $CUDA_PATH, " +
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
            foreach (string candidate in Candidates(CublasNames(s_windows), "cublas", s_windows))
            {
                if (!NativeLibrary.TryLoad(candidate, out s_cublas)) continue;
                Register();
                return true;
            }
            return false;
        }
    }

    /// <summary>Where NVRTC is looked for, in order: the loader's own search, then the usual toolkit and pip folders.</summary>
    public static IEnumerable<string> NvrtcCandidates() => Candidates(NvrtcNames(s_windows), "cuda_nvrtc", s_windows);

    /// <summary>
    /// <paramref name="names"/> for the loader's own search, then in the toolkit folders: on Windows %CUDA_PATH%\bin\x64
    /// (CUDA 13) and \bin (12); elsewhere $CUDA_HOME/$CUDA_PATH/lib64, /usr/local/cuda and pip's
    /// nvidia/<paramref name="pipPackage"/>/lib and nvidia/cu13/lib.
    /// </summary>
    private static IEnumerable<string> Candidates(string[] names, string pipPackage, bool windows) =>
        Candidates(names, pipPackage, windows, Environment.GetEnvironmentVariable("CUDA_PATH"));

    /// <summary>The same, with CUDA_PATH's value given (the toolkit's folder; on Windows the only one looked in).</summary>
    internal static IEnumerable<string> Candidates(string[] names, string pipPackage, bool windows, string? cudaPath)
    {
        foreach (string n in names) yield return n;
        foreach (string dir in windows ? WindowsFolders(cudaPath) : LinuxFolders(pipPackage, cudaPath))
            foreach (string n in names)
            {
                string path = Path.Combine(dir, n);
                if (File.Exists(path)) yield return path;
            }
    }

    private static IEnumerable<string> WindowsFolders(string? cudaPath) =>
        cudaPath is { Length: > 0 } cuda ? [Path.Combine(cuda, "bin", "x64"), Path.Combine(cuda, "bin")] : [];

    private static List<string> LinuxFolders(string pipPackage, string? cudaPath)
    {
        var dirs = new List<string>();
        foreach (string? root in new[] { Environment.GetEnvironmentVariable("CUDA_HOME"), cudaPath })
            if (root is { Length: > 0 }) dirs.Add(Path.Combine(root, "lib64"));
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
        return dirs;
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
